"""Train Echo's neural codec on a manifest's audio.

    python recipes/train_codec.py --preset cpu --train_manifest runs/quickstart/corpus/train.jsonl
    accelerate launch recipes/train_codec.py --preset base --run_dir runs/codec-base   # GPUs, bf16
    python recipes/train_codec.py --preset cpu --resume          # go on from the last checkpoint
    python recipes/train_codec.py --preset cpu --decoder_only_from runs/codec/model --run_dir runs/decoder

With `--decoder_only_from`, a trained codec's encoder and quantizer stay frozen and only its
decoder trains (as Vocos renders EnCodec's tokens): the tokens do not change, so token shards
and language models made with that codec stay valid with the new decoder. Adding
`--add_pitch_stream 64` gives that decoder a pitch stream (codec/pitch.py): the codebooks stay
those of the trained codec, with F0 in 64 codes as a new row 2 of its codes.

Any config key can be overridden: `--steps 2000 --model.n_q 4 --loss_weights.mel 30`.
The run directory receives config.yaml, TensorBoard logs, checkpoints, audio samples and,
at the end, the exported codec in `model/` (load it with `codec.loading.load_codec`).
"""

from __future__ import annotations

import itertools
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from codec.discriminators import Discriminator, DiscriminatorConfig
from codec.losses import (
    discriminator_adversarial_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_distance,
    multiscale_mel_loss,
    waveform_l1_loss,
)
from codec.model import CodecConfig, EchoCodec
from codec.phonetic import PhonemeTable, PhoneticProbe, quantizer_frozen
from data.audio import write_audio
from data.manifest import Utterance, read_manifest
from data.phonemes import Phonemizer
from data.plots import spectrogram_image
from data.segments import AudioSegments, PhonemizedUtterances, collate_phonemized
from recipes.training import (
    CONFIG_DIR,
    Run,
    TrainingConfig,
    adamw,
    lr_at,
    set_lr,
    start_run,
)


@dataclass
class LossWeights:
    mel: float = 15.0
    waveform: float = 0.0
    commitment: float = 1.0
    adversarial: float = 3.0  # the adversarial and feature losses average over sub-discriminators (EnCodec's scale)
    feature_matching: float = 3.0
    phonetic: float = 0.0  # CTC of the transcript's phonemes read off codebook 1 (codec/phonetic.py); 0: off


@dataclass
class TrainCodecConfig(TrainingConfig):
    model: CodecConfig = field(default_factory=CodecConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    train_manifest: str = "runs/quickstart/corpus/train.jsonl"
    dev_manifest: str = "runs/quickstart/corpus/dev.jsonl"
    batch_size: int = 8
    segment_seconds: float = 1.0
    discriminator_lr: float = 3e-4
    betas: tuple[float, ...] = (0.8, 0.99)
    gan: bool = True
    gan_start_step: int = 0  # generator-only warm-up before the discriminators join
    cache_audio: bool = False
    phonetic_batch_size: int = 4  # whole utterances per step for the phonetic loss
    phonetic_max_seconds: float = 6.0  # longer utterances are left out of it
    val_items: int = 16
    decoder_only_from: str = ""  # a trained codec: train only its decoder; its encoder and quantizer stay frozen
    add_pitch_stream: int = 0  # with decoder_only_from: F0 coded in this many codes beside its RVQ (codec/pitch.py)
    run_dir: str = "runs/codec"
    lr: float = 3e-4
    grad_clip: float = 10.0


def phonemized(utterances: list[Utterance], sample_rate: int, max_seconds: float, table: PhonemeTable | None = None,
               cache: bool = False) -> tuple[PhonemizedUtterances, PhonemeTable]:
    """Whole utterances with their transcripts' phonemes, and the phoneme table (built here unless given)."""
    phonemizer = Phonemizer(with_stress=False)
    tokens: list[list[str]] = [[] for _ in utterances]
    for language in dict.fromkeys(u.language for u in utterances):
        positions = [i for i, u in enumerate(utterances) if u.language == language]
        for i, phonemes in zip(positions, phonemizer.phonemize([utterances[i].text for i in positions], language)):
            tokens[i] = phonemes
    table = table or PhonemeTable(tokens)
    return PhonemizedUtterances(utterances, [table.encode(t) for t in tokens], sample_rate, max_seconds, cache), table


@torch.no_grad()
def validate(codec: EchoCodec, dev: AudioSegments, items: int, probe: PhoneticProbe | None = None,
             dev_phonemized: PhonemizedUtterances | None = None) -> dict[str, float | list[torch.Tensor]]:
    """Mel distance of reconstructions at every codebook and at codebook 1 alone, on fixed dev segments;
    with the phonetic probe, its phoneme error rate reading codebook 1 of whole dev utterances."""
    codec.eval()
    result: dict[str, float | list[torch.Tensor]] = {"samples": []}
    distances = {codec.n_q: [], 1: []}
    device = next(codec.parameters()).device
    for i in range(min(items, len(dev))):
        wav = dev[i].unsqueeze(0).to(device)  # [1, 1, T]
        codes = codec.encode(wav)
        for n_q in distances:
            recon = codec.decode(codes[:, :n_q])[..., : wav.shape[-1]]
            distances[n_q].append(float(mel_distance(recon, wav, codec.sample_rate)))
            if i < 2:
                result["samples"].append((f"{i}/q{n_q}", recon[0].cpu()))
        if i < 2:
            result["samples"].append((f"{i}/original", wav[0].cpu()))
    for n_q, values in distances.items():
        result[f"mel_distance_q{n_q}"] = sum(values) / len(values)
    if probe is not None and dev_phonemized is not None:
        wav, frames, targets, lengths = collate_phonemized([dev_phonemized[i] for i in range(len(dev_phonemized))],
                                                           codec.hop_length)
        z_q = codec(wav.to(device), n_q=1, decode=False).quantizer.z_q
        result["phoneme_error_rate_q1"] = probe.phoneme_error_rate(z_q, frames, targets, lengths)
    codec.train()
    return result


def build_codec(run: Run) -> tuple[EchoCodec, bool]:
    """A fresh codec of the config, or (decoder_only_from) a trained one whose decoder alone trains."""
    cfg = run.config
    if cfg.add_pitch_stream and not cfg.decoder_only_from:
        raise SystemExit("--add_pitch_stream upgrades a trained codec (--decoder_only_from); a new codec takes "
                         "--model.pitch_bins")
    if not cfg.decoder_only_from:
        return EchoCodec(cfg.model), False
    if "model" in run.overrides:
        raise SystemExit("--decoder_only_from keeps the trained codec's architecture: drop the --model.* overrides "
                         "(--add_pitch_stream N gives its decoder a pitch stream)")
    codec = EchoCodec.from_pretrained(cfg.decoder_only_from).train()
    if cfg.add_pitch_stream:
        codec = with_pitch_stream(codec, cfg.add_pitch_stream)
    codec.encoder.requires_grad_(False)
    codec.quantizer.requires_grad_(False)
    cfg.model = codec.config  # the trained codec's architecture, recorded in config.yaml
    return codec, True


def with_pitch_stream(codec: EchoCodec, pitch_bins: int) -> EchoCodec:
    """The trained `codec` with a pitch stream of `pitch_bins` codes; the new harmonic source starts at zero,
    so the result decodes as `codec` did until its decoder trains."""
    if codec.config.pitch_bins:
        raise SystemExit(f"{codec.config.pitch_bins} pitch codes are part of this codec's tokens; "
                         "train a new codec to change them")
    upgraded = EchoCodec(replace(codec.config, pitch_bins=pitch_bins)).train()
    missing, unexpected = upgraded.load_state_dict(codec.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("decoder.source.") for key in missing), (missing, unexpected)
    return upgraded


def load_data(cfg: TrainCodecConfig) -> tuple[AudioSegments, AudioSegments, DataLoader]:
    """Random training segments and their loader, and fixed dev segments (twice as long)."""
    sr = cfg.model.sample_rate
    train_set = AudioSegments(read_manifest(cfg.train_manifest), sr, cfg.segment_seconds, cache=cfg.cache_audio)
    dev_set = AudioSegments(read_manifest(cfg.dev_manifest)[: cfg.val_items], sr, 2 * cfg.segment_seconds,
                            random_crop=False)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    if len(loader) == 0:
        raise SystemExit(f"{cfg.train_manifest} has {len(train_set)} utterances, fewer than one batch of {cfg.batch_size}")
    return train_set, dev_set, loader


def phonetic_task(run: Run, train_set: AudioSegments, dev_set: AudioSegments
                  ) -> tuple[PhoneticProbe | None, DataLoader | None, PhonemizedUtterances | None]:
    """With a phonetic loss weight: the probe that reads phonemes off codebook 1, whole training
    utterances with their phonemes, and the dev ones for its phoneme error rate (None x 3 without)."""
    cfg = run.config
    if cfg.loss_weights.phonetic <= 0:
        return None, None, None
    sr = cfg.model.sample_rate
    phonetic_set, table = phonemized(train_set.utterances, sr, cfg.phonetic_max_seconds, cache=cfg.cache_audio)
    dev_phonemized, _ = phonemized(dev_set.utterances, sr, cfg.phonetic_max_seconds, table)
    loader = DataLoader(phonetic_set, batch_size=cfg.phonetic_batch_size, shuffle=True, drop_last=True,
                        collate_fn=partial(collate_phonemized, hop_length=cfg.model.hop_length))
    run.accelerator.print(f"phonetic loss on codebook 1: {len(table)} phonemes, {len(phonetic_set)} utterances")
    return PhoneticProbe(cfg.model.latent_dim, len(table)), loader, dev_phonemized


def generator_gan_losses(discriminator: Discriminator, recon: torch.Tensor, wav: torch.Tensor) -> dict[str, torch.Tensor]:
    """The generator's adversarial and feature-matching losses, through the unwrapped discriminator
    frozen for the call: their gradient must reach the codec only, never the discriminator's
    parameters (nor DDP's gradient hooks)."""
    discriminator.requires_grad_(False)
    fake = discriminator(recon)
    with torch.no_grad():
        real = discriminator(wav)
    discriminator.requires_grad_(True)
    return {"adversarial": generator_adversarial_loss(fake.logits),
            "feature_matching": feature_matching_loss(real.features, fake.features)}


def log_training(run: Run, step: int, losses: dict[str, torch.Tensor], loss: torch.Tensor, out, lr: float,
                 grad_norm: float, audio_per_second: float, progress: tqdm) -> None:
    q = out.quantizer
    logs = {f"train/{k}": float(v.detach()) for k, v in losses.items()}
    logs.update({"train/loss": float(loss.detach()), "train/lr": lr, "train/grad_norm": grad_norm, "train/audio_seconds_per_second": audio_per_second})
    logs.update({f"codebooks/perplexity_{k + 1}": float(p) for k, p in enumerate(q.perplexity)})
    logs.update({f"codebooks/usage_{k + 1}": float(u) for k, u in enumerate(q.usage)})
    run.accelerator.log(logs, step=step)
    progress.set_postfix(mel=f"{losses['mel'].item():.3f}", ppl1=f"{q.perplexity[0].item():.0f}")


def log_validation(run: Run, step: int, codec: EchoCodec, dev_set: AudioSegments, probe: PhoneticProbe | None,
                   dev_phonemized: PhonemizedUtterances | None) -> None:
    """Validate, and show it: TensorBoard scalars, audio and spectrograms, samples/*.wav, a line."""
    cfg, sr = run.config, run.config.model.sample_rate
    result = validate(codec, dev_set, cfg.val_items, probe, dev_phonemized)
    run.accelerator.log({f"val/{k}": v for k, v in result.items() if k != "samples"}, step=step)
    writer = run.accelerator.get_tracker("tensorboard", unwrap=True)
    for name, sample in result["samples"]:
        writer.add_audio(f"samples/{name}", sample.reshape(-1), step, sample_rate=sr)
        writer.add_image(f"spectrograms/{name}", spectrogram_image(sample, sr), step, dataformats="HWC")
        write_audio(run.directory / "samples" / f"step{step}_{name.replace('/', '_')}.wav", sample, sr)
    tqdm.write(
        f"step {step}: val mel distance {result[f'mel_distance_q{codec.n_q}']:.3f} "
        f"(codebook 1 only: {result['mel_distance_q1']:.3f})"
        + (f"; phoneme error rate from codebook 1 {result['phoneme_error_rate_q1']:.1%}"
           if "phoneme_error_rate_q1" in result else "")
    )


def main(argv: list[str] | None = None) -> Path:
    run = start_run(TrainCodecConfig, argv, description=__doc__, preset_dir=CONFIG_DIR / "codec", tracker="codec")
    cfg, accelerator = run.config, run.accelerator
    codec, decoder_only = build_codec(run)
    run.save_config()
    sr = cfg.model.sample_rate
    train_set, dev_set, loader = load_data(cfg)
    discriminator = Discriminator(cfg.discriminator)
    # The phonetic loss trains the encoder: not when the decoder trains alone.
    probe, phonetic_loader, dev_phonemized = (None, None, None) if decoder_only else phonetic_task(run, train_set, dev_set)
    generator_parameters = list((codec.decoder if decoder_only else codec).parameters())
    generator_parameters += list(probe.parameters()) if probe is not None else []
    opt_g = adamw(generator_parameters, lr=cfg.lr, betas=cfg.betas)
    opt_d = adamw(discriminator.parameters(), lr=cfg.discriminator_lr, betas=cfg.betas)
    codec, discriminator, opt_g, opt_d, loader = accelerator.prepare(codec, discriminator, opt_g, opt_d, loader)
    if probe is not None:
        probe, phonetic_loader = accelerator.prepare(probe, phonetic_loader)

    state = run.restore()
    step = state["step"] if state else 0
    n_params = sum(p.numel() for p in accelerator.unwrap_model(codec).parameters())
    accelerator.print(f"codec: {n_params / 1e6:.2f} M parameters, {cfg.model.frame_rate:g} Hz frames, "
                      f"{cfg.model.bitrate / 1000:g} kbps; {len(train_set)} training utterances")

    w = cfg.loss_weights
    quantizer = accelerator.unwrap_model(codec).quantizer
    batches = (batch for _ in itertools.count() for batch in loader)
    phonetic_batches = (batch for _ in itertools.count() for batch in phonetic_loader) if probe is not None else None
    progress = tqdm(total=cfg.steps, initial=step, desc="codec", disable=not run.is_main)
    frames_seen, clock = 0, time.perf_counter()
    while step < cfg.steps:
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        set_lr(opt_g, lr)
        set_lr(opt_d, lr_at(step, cfg.discriminator_lr, cfg.warmup_steps, cfg.steps))
        use_gan = cfg.gan and step >= cfg.gan_start_step
        wav = next(batches)  # [B, 1, T]

        with accelerator.accumulate(codec, discriminator, *([probe] if probe is not None else [])):
            with quantizer_frozen(quantizer) if decoder_only else nullcontext():
                out = codec(wav)
            recon = out.wav.float()
            losses = {"mel": multiscale_mel_loss(recon, wav, sr), "waveform": waveform_l1_loss(recon, wav)}
            if not decoder_only:
                losses["commitment"] = out.commitment_loss
            if probe is not None:
                utterances, frames, targets, target_lengths = next(phonetic_batches)
                with quantizer_frozen(quantizer):  # padded utterances: leave its statistics alone
                    z_q = codec(utterances, n_q=1, decode=False).quantizer.z_q  # codebook 1, straight-through
                losses["phonetic"] = probe(z_q, frames, targets, target_lengths)
            if use_gan:
                losses |= generator_gan_losses(accelerator.unwrap_model(discriminator), recon, wav)
            loss_g = sum(getattr(w, name) * value for name, value in losses.items())
            opt_g.zero_grad(set_to_none=True)
            accelerator.backward(loss_g)
            if accelerator.sync_gradients:
                grad_norm_g = float(accelerator.clip_grad_norm_(generator_parameters, cfg.grad_clip))
            opt_g.step()

            if use_gan:
                real, fake = discriminator(wav), discriminator(recon.detach())
                loss_d = discriminator_adversarial_loss(real.logits, fake.logits)
                opt_d.zero_grad(set_to_none=True)
                accelerator.backward(loss_d)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(discriminator.parameters(), cfg.grad_clip)
                opt_d.step()
                losses["discriminator"] = loss_d
        frames_seen += wav.shape[0] * wav.shape[-1] * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.update(1)

        if cfg.due(step, cfg.log_every):
            log_training(run, step, losses, loss_g, out, lr, grad_norm_g, frames_seen / sr / (time.perf_counter() - clock),
                         progress)
            frames_seen, clock = 0, time.perf_counter()
        if cfg.due(step, cfg.val_every):
            if run.is_main:
                log_validation(run, step, accelerator.unwrap_model(codec), dev_set,
                               accelerator.unwrap_model(probe) if probe is not None else None, dev_phonemized)
            accelerator.wait_for_everyone()
        if cfg.due(step, cfg.checkpoint_every):
            run.checkpoint(step)

    progress.close()
    accelerator.wait_for_everyone()
    model_dir = run.directory / "model"
    if run.is_main:
        accelerator.unwrap_model(codec).save_pretrained(model_dir)
        accelerator.print(f"codec exported to {model_dir}")
    accelerator.end_training()
    return model_dir


if __name__ == "__main__":
    main()
