"""Train Echo's language models (AR and/or NAR) on a tokenized corpus.

    python recipes/train_lm.py --preset cpu --tokens runs/quickstart/tokens --stage both
    accelerate launch recipes/train_lm.py --preset base --tokens runs/libritts/tokens --stage ar
    python recipes/train_lm.py --preset cpu --resume                     # go on from the last checkpoint
    python recipes/train_lm.py --preset cpu --init_from runs/lm/model    # fine-tune an exported model

`--stage ar` and `--stage nar` can run one after the other into the same run directory (each
keeps its own checkpoints); `--stage both` trains the two side by side on the same batches.
Any config key can be overridden: `--steps 2000 --ar.n_layers 6 --prompt.mode prefix`.
The run directory receives config.yaml, TensorBoard logs, checkpoints-<stage>/ and, at the
end, the exported model in `model/` (ar/, nar/, text/ and, with --codec, codec/), the
directory `app.TTS.from_pretrained` loads. With `--snapshot_every N` the models are also
exported every N steps into snapshots/ (learning curves: recipes/quickstart.py's curve stage).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from data.lm_data import FrameBudgetBatchSampler, LMBatch, LMDataset, PromptConfig
from data.tokens import TokenCorpus
from lm.ar import ARConfig, ARModel
from lm.nar import NARConfig, NARModel
from lm.pretrained import PretrainedLM, text_vocab_identity
from lm.reading import attention_stats, shuffle_text
from recipes.training import CONFIG_DIR, checkpoint_dirs, load_config, lr_at, resume_from_checkpoint, save_checkpoint, save_config

STAGES = ("ar", "nar", "both")


@dataclass
class ModelSettings:
    """A model's settings beyond what the corpus fixes (vocabulary, codec): its size. The NAR's whole config."""

    d_model: int = 1024
    n_heads: int = 16
    n_layers: int = 12
    ffn_dim: int = 4096
    ffn: str = "gelu"
    dropout: float = 0.1


@dataclass
class ARSettings(ModelSettings):
    """The AR's: its size, and how it reads its text (lm/ar.py's ARConfig)."""

    duration_guided: bool = False  # read the aligned text token at each frame (recipes/align.py first)
    text_window: int | None = None  # duration-guided: its frames see the text tokens within this many
    text_dropout: float = 0.0  # share of items trained with the phonemes hidden (classifier-free guidance)


@dataclass
class TrainLMConfig:
    ar: ARSettings = field(default_factory=ARSettings)
    nar: ModelSettings = field(default_factory=ModelSettings)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    tokens: str = "runs/quickstart/tokens"
    train_split: str = "train"
    dev_split: str = "dev"
    codec: str = ""  # codec directory to copy into the exported model (must match the tokens' codec)
    init_from: str = ""  # an exported model directory to fine-tune from
    run_dir: str = "runs/lm"
    stage: str = "both"
    steps: int = 100000
    max_frames: int = 8000  # per batch and process: items x (text + prompt + target positions)
    max_batch_size: int = 64
    lr: float = 5e-4
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1
    bf16: bool = True  # on GPUs; CPUs train in float32
    num_workers: int = 0
    log_every: int = 10
    val_every: int = 1000
    val_batches: int = 8
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    snapshot_every: int = 0  # also export the models every this many steps and at the end (learning curves); 0: never
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--preset", default="cpu", help="tiny, cpu, base, or a path to a YAML file")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    return parser


def build_models(cfg: TrainLMConfig, corpus: TokenCorpus, stages: list[str]) -> dict[str, PretrainedLM]:
    """Fresh models sized by the config and shaped by the corpus, or the ones of `init_from`."""
    codec, vocab = corpus.codec_identity, text_vocab_identity(corpus.vocab.to_dict())
    models: dict[str, PretrainedLM] = {}
    for stage in stages:
        model_class, config_class = (ARModel, ARConfig) if stage == "ar" else (NARModel, NARConfig)
        if cfg.init_from:
            source = Path(cfg.init_from) / stage
            models[stage] = model_class.from_pretrained(source, expect_codec=codec, expect_text_vocab=vocab)
            continue
        settings = getattr(cfg, stage)
        if getattr(settings, "duration_guided", False) and not corpus.has_durations:
            raise SystemExit(f"--ar.duration_guided needs durations in {corpus.directory}: "
                             f"run `python recipes/align.py --tokens {corpus.directory}` first")
        models[stage] = model_class(config_class(
            text_vocab_size=len(corpus.vocab), text_pad_id=corpus.vocab.pad_id,
            codebook_size=codec.codebook_size, n_q=codec.n_q, codec=codec.to_dict(), text_vocab=vocab,
            **asdict(settings),
        ))  # fmt: skip
    return models


def nar_stages(batch: LMBatch, n_q: int, generator: torch.Generator) -> torch.Tensor:
    """One codebook j in 2..K per item, uniformly: LongTensor [B]."""
    return torch.randint(2, n_q + 1, (len(batch),), generator=generator).to(batch.codes.device)


def run_models(models: dict[str, torch.nn.Module], batch: LMBatch, n_q: int, generator: torch.Generator):
    """Forward every model on the batch -> {stage: LMOutput}."""
    outputs = {}
    args = (batch.text, batch.text_lengths, batch.prompt, batch.prompt_lengths, batch.codes, batch.code_lengths)
    if "ar" in models:
        outputs["ar"] = models["ar"](*args, alignment=batch.alignment)
    if "nar" in models:
        outputs["nar"] = models["nar"](*args, stage=nar_stages(batch, n_q, generator))
    return outputs


@torch.no_grad()
def validate(models: dict[str, PretrainedLM], loader: DataLoader, n_batches: int, n_q: int, device,
             seed: int = 0) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor] | None]:
    """Loss and top-1/top-10 accuracy on dev batches: the AR's codebook 1 and each NAR codebook j.

    For the AR also what reading buys (lm/reading.py): the same batches with each item's text
    shuffled (`ar/shuffled_text/*`, and `ar/reading_gap` = top-1 minus shuffled top-1), and its
    attention onto the text on the first batch (focus rate, monotonicity, error against the
    aligner's durations where the corpus has them) for the layer that focuses most. Returns the
    figures and, for the first item, that layer's attention [T, N] and its text ids [N] (None
    without an AR).
    """
    for model in models.values():
        model.eval()
    sums: dict[str, list[float]] = {}
    generator = torch.Generator().manual_seed(seed)
    attention_figures, first_attention = {}, None

    def add(name: str, out) -> None:
        n = float(out.n_tokens)
        acc = sums.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        acc[0] += float(out.loss) * n
        acc[1] += float(out.top1) * n
        acc[2] += float(out.top10) * n
        acc[3] += n

    for i, batch in enumerate(loader):
        if i >= n_batches:
            break
        batch = batch.to(device)
        args = (batch.text, batch.text_lengths, batch.prompt, batch.prompt_lengths, batch.codes, batch.code_lengths)
        if "ar" in models:
            ar = models["ar"]
            add("ar/codebook_1", ar(*args, alignment=batch.alignment))
            shuffled = shuffle_text(batch.text, batch.text_lengths, generator)
            add("ar/shuffled_text", ar(shuffled, *args[1:], alignment=batch.alignment))
            if i == 0:
                maps = ar.text_attention(*args, alignment=batch.alignment)  # [layers, B, T, N]
                per_layer = [attention_stats(m, batch.code_lengths, batch.alignment) for m in maps]
                best = max(range(len(per_layer)), key=lambda k: per_layer[k]["focus_rate"])
                attention_figures = {f"ar/attention/{k}": v for k, v in per_layer[best].items()}
                attention_figures["ar/attention/layer"] = best + 1
                T, N = int(batch.code_lengths[0]), int(batch.text_lengths[0])
                first_attention = maps[best, 0, :T, :N].cpu(), batch.text[0, :N].cpu()
        if "nar" in models:
            for j in range(2, n_q + 1):
                add(f"nar/codebook_{j}", models["nar"](*args, stage=j))
    for model in models.values():
        model.train()
    result = {}
    for name, (loss, top1, top10, n) in sums.items():
        n = max(n, 1.0)
        result.update({f"{name}/loss": loss / n, f"{name}/top1": top1 / n, f"{name}/top10": top10 / n})
    if "ar/codebook_1/top1" in result:
        result["ar/reading_gap"] = result["ar/codebook_1/top1"] - result["ar/shuffled_text/top1"]
    return result | attention_figures, first_attention


def export(cfg: TrainLMConfig, models: dict[str, PretrainedLM], corpus: TokenCorpus, run_dir: Path) -> Path:
    """Write model/<stage> for each trained model, the text front-end and (with --codec) the codec."""
    model_dir = run_dir / "model"
    for stage, model in models.items():
        model.save_pretrained(model_dir / stage)
    text_dir = model_dir / "text"
    shutil.rmtree(text_dir, ignore_errors=True)
    shutil.copytree(corpus.text_dir, text_dir)
    if cfg.codec:
        from codec.interface import load_codec

        codec = load_codec(cfg.codec)
        corpus.check_codec(codec.identity)
        codec.save_pretrained(model_dir / "codec")
    return model_dir


def save_snapshot(models: dict[str, PretrainedLM], run_dir: Path, step: int, seconds: float) -> Path:
    """snapshots/<stages>-step-<step>/ (stages "ar", "nar" or "ar+nar"): each model as `save_pretrained`
    writes it, and training.json with the step and the wall seconds of training so far (over every
    resumed run, validation included)."""
    stages = "+".join(models)
    final = run_dir / "snapshots" / f"{stages}-step-{step:06d}"
    tmp = final.with_name("." + final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for stage, model in models.items():
        model.save_pretrained(tmp / stage)
    (tmp / "training.json").write_text(json.dumps({"stages": list(models), "step": step,
                                                   "seconds": round(seconds, 1)}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def snapshots(run_dir: str | Path, stage: str) -> list[tuple[Path, dict]]:
    """The snapshots of `stage` ("ar", "nar" or "ar+nar") in `run_dir`, by step: [(directory, training.json)]."""
    found = sorted(Path(run_dir, "snapshots").glob(f"{stage}-step-*/training.json"))
    return [(path.parent, json.loads(path.read_text())) for path in found]


def main(argv: list[str] | None = None) -> Path:
    args, overrides = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(TrainLMConfig, args.preset, overrides, preset_dir=CONFIG_DIR / "lm")
    stages = ["ar", "nar"] if cfg.stage == "both" else [cfg.stage]
    run_dir = Path(cfg.run_dir)
    checkpoints = f"checkpoints-{cfg.stage}"  # `--stage ar` then `--stage nar` can share a run directory
    if checkpoint_dirs(run_dir, checkpoints) and not args.resume:
        raise SystemExit(f"{run_dir / checkpoints} already has checkpoints: pass --resume to continue, or choose another --run_dir")

    accelerator = Accelerator(
        mixed_precision="bf16" if cfg.bf16 and torch.cuda.is_available() else "no",
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with="tensorboard",
        # The NAR's per-codebook heads are not all used by every batch.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / f"config-{cfg.stage}.yaml")
    accelerator.init_trackers(f"lm-{cfg.stage}")

    train = TokenCorpus.open(cfg.tokens, splits=cfg.train_split)
    n_q = train.n_q
    if "nar" in stages and n_q < 2:
        raise SystemExit(f"the corpus' codec has {n_q} codebook: there is nothing for the NAR to fill; use --stage ar")
    dataset = LMDataset(train, cfg.prompt, seed=cfg.seed)
    sampler = FrameBudgetBatchSampler(
        dataset.lengths(), cfg.max_frames, max_batch_size=cfg.max_batch_size, seed=cfg.seed,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index,
    )  # fmt: skip
    # The sampler gives each process its share already: the loader is not passed to accelerator.prepare.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=cfg.num_workers)
    if len(sampler) == 0:
        raise SystemExit(f"{cfg.tokens} ({cfg.train_split}) gives no batch under max_frames={cfg.max_frames}")
    dev_loader = None
    if cfg.dev_split in TokenCorpus.open(cfg.tokens).splits:
        dev = LMDataset(TokenCorpus.open(cfg.tokens, splits=cfg.dev_split), cfg.prompt, seed=cfg.seed + 1)
        dev_sampler = FrameBudgetBatchSampler(dev.lengths(), cfg.max_frames, max_batch_size=cfg.max_batch_size,
                                              shuffle=False, num_replicas=1, rank=0)
        dev_loader = DataLoader(dev, batch_sampler=dev_sampler, collate_fn=dev.collate)

    models = build_models(cfg, train, stages)
    params = [p for model in models.values() for p in model.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )  # fmt: skip
    prepared = accelerator.prepare(*models.values(), optimizer)
    wrapped = dict(zip(models, prepared[:-1]))
    optimizer = prepared[-1]

    state = resume_from_checkpoint(accelerator, run_dir, checkpoints) if args.resume else None
    step = state["step"] if state else 0
    seconds_before = state.get("seconds", 0.0) if state else 0.0  # training wall time of the earlier runs
    started = time.perf_counter()
    if state:
        sampler.load_state_dict(state["sampler"])
        accelerator.print(f"resumed from step {step} (epoch {sampler.epoch}, batch {sampler.position})")
    for stage, model in models.items():
        accelerator.print(f"{stage}: {model.num_parameters() / 1e6:.2f} M parameters")
    accelerator.print(
        f"{len(train)} training utterances ({train.hours:.2f} h), {len(sampler)} batches an epoch per process, "
        f"codec {n_q} x {train.codec_identity.codebook_size} at {train.frame_rate:g} Hz"
    )

    generator = torch.Generator().manual_seed(cfg.seed * 1000 + accelerator.process_index + step)
    progress = tqdm(total=cfg.steps, initial=step, desc=f"lm {cfg.stage}", disable=not accelerator.is_main_process)
    frames_seen, clock = 0, time.perf_counter()
    epoch = sampler.epoch
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        consumed = sampler.position
        for batch in loader:
            consumed += 1
            batch = batch.to(accelerator.device)
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with accelerator.accumulate(*wrapped.values()):
                outputs = run_models(wrapped, batch, n_q, generator)
                loss = sum(out.loss for out in outputs.values())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            frames_seen += int(batch.code_lengths.sum()) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - clock
                logs = {"train/lr": lr, "train/grad_norm": float(grad_norm), "train/frames_per_second": frames_seen / elapsed}
                for stage, out in outputs.items():
                    logs.update({f"train/{stage}/loss": out.loss.item(), f"train/{stage}/top1": out.top1.item(),
                                 f"train/{stage}/top10": float(out.top10)})
                    if getattr(out, "advance_loss", None) is not None:
                        logs.update({f"train/{stage}/advance_loss": out.advance_loss.item(),
                                     f"train/{stage}/advance_accuracy": float(out.advance_accuracy)})
                accelerator.log(logs, step=step)
                progress.set_postfix({f"{s}_loss": f"{o.loss.item():.3f}" for s, o in outputs.items()}
                                     | {"frames/s": f"{frames_seen / elapsed:.0f}"})
                frames_seen, clock = 0, time.perf_counter()

            if dev_loader is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                if accelerator.is_main_process:
                    unwrapped = {s: accelerator.unwrap_model(m) for s, m in wrapped.items()}
                    result, attention = validate(unwrapped, dev_loader, cfg.val_batches, n_q, accelerator.device,
                                                 seed=cfg.seed)
                    accelerator.log({f"val/{k}": v for k, v in result.items()}, step=step)
                    if attention is not None:
                        from app.figures import attention_figure

                        weights, text_ids = attention
                        figure = attention_figure(weights.numpy(), train.vocab.decode(text_ids.tolist()),
                                                  train.frame_rate, title=f"dev item 1, step {step}")
                        accelerator.get_tracker("tensorboard").writer.add_figure("val/ar/attention", figure, step)
                    shown = ", ".join(f"{k.removesuffix('/top1').replace('/codebook_', ' q')} {v:.3f}" for k, v in result.items() if k.endswith("top1"))
                    reading = ", ".join(f"{k.removeprefix('ar/')} {v:.3f}" for k, v in result.items()
                                        if k == "ar/reading_gap" or k.startswith("ar/attention/"))
                    tqdm.write(f"step {step}: dev top-1 accuracy: {shown}" + (f"; {reading}" if reading else ""))
                    (run_dir / f"validation-{cfg.stage}.json").write_text(json.dumps({"step": step, **result}, indent=2))
                accelerator.wait_for_everyone()

            seconds = seconds_before + time.perf_counter() - started
            if cfg.snapshot_every and (step % cfg.snapshot_every == 0 or step == cfg.steps):
                if accelerator.is_main_process:
                    save_snapshot({s: accelerator.unwrap_model(m) for s, m in wrapped.items()}, run_dir, step, seconds)
                accelerator.wait_for_everyone()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(
                    accelerator, run_dir, step, {"sampler": sampler.state_dict(consumed=consumed), "seconds": seconds},
                    keep=cfg.keep_checkpoints, folder=checkpoints,
                )  # fmt: skip
            if step >= cfg.steps:
                break
        else:
            epoch += 1
            continue
        break

    progress.close()
    accelerator.wait_for_everyone()
    model_dir = run_dir / "model"
    if accelerator.is_main_process:
        model_dir = export(cfg, {s: accelerator.unwrap_model(m) for s, m in wrapped.items()}, train, run_dir)
        accelerator.print(f"model exported to {model_dir}")
    accelerator.end_training()
    return model_dir


if __name__ == "__main__":
    main()
