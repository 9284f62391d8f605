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

import dataclasses
import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedDataParallelKwargs
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from codec.pitch import pitch_agreement
from data.lm_data import FrameBudgetBatchSampler, LMBatch, LMDataset, PromptConfig
from data.pretrained import write_directory
from data.tokens import TokenCorpus
from lm.ar import ARConfig, ARModel
from lm.layout import frame_mask
from lm.losses import LMOutput
from lm.nar import PITCH_ROW, NARConfig, NARModel
from lm.pretrained import LMConfig, PretrainedLM, text_vocab_identity
from lm.reading import attention_stats, shuffle_text
from recipes.training import CONFIG_DIR, Run, TrainingConfig, adamw, lr_at, set_lr, start_run

STAGES = ("ar", "nar", "both")


@dataclass
class TrainLMConfig(TrainingConfig):
    """The model sections are the models' own configs (lm/ar.py, lm/nar.py): their sizes and how
    they read; the fields the tokens fix (`LMConfig.corpus_fields`) are filled in from the corpus."""

    ar: ARConfig = field(default_factory=ARConfig)
    nar: NARConfig = field(default_factory=NARConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    tokens: str = "runs/quickstart/tokens"
    train_split: str = "train"
    dev_split: str = "dev"
    codec: str = ""  # codec directory to copy into the exported model (must match the tokens' codec)
    init_from: str = ""  # an exported model directory to fine-tune from
    stage: str = "both"
    max_frames: int = 8000  # per batch and process: items x (text + prompt + target positions)
    max_batch_size: int = 64
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.01
    val_batches: int = 8
    snapshot_every: int = 0  # also export the models every this many steps and at the end (learning curves); 0: never
    run_dir: str = "runs/lm"
    steps: int = 100000
    lr: float = 5e-4
    warmup_steps: int = 1000
    val_every: int = 1000
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {self.snapshot_every}")


def fitted_to(settings: LMConfig, corpus: TokenCorpus, section: str) -> LMConfig:
    """`settings` with the fields the tokens fix (codec, text vocabulary) taken from the corpus.

    A section may repeat them (a run's saved config does) but not contradict them.
    """
    codec = corpus.codec_identity
    fixed = dict(text_vocab_size=len(corpus.vocab), text_pad_id=corpus.vocab.pad_id, codebook_size=codec.codebook_size,
                 n_q=codec.n_q, codec=codec.to_dict(), text_vocab=text_vocab_identity(corpus.vocab.to_dict()))
    default = type(settings)()
    for key in LMConfig.corpus_fields:
        given = getattr(settings, key)
        if given != getattr(default, key) and given != fixed[key]:
            raise SystemExit(f"{section}.{key} is {given!r} but the tokens in {corpus.directory} fix it to "
                             f"{fixed[key]!r}: drop it from the config")
    return dataclasses.replace(settings, **fixed)


def build_models(cfg: TrainLMConfig, corpus: TokenCorpus, stages: list[str]) -> dict[str, PretrainedLM]:
    """Fresh models of the config's sections fitted to the corpus, or the ones of `init_from`."""
    models: dict[str, PretrainedLM] = {}
    for stage in stages:
        model_class = ARModel if stage == "ar" else NARModel
        if cfg.init_from:
            models[stage] = model_class.from_pretrained(
                Path(cfg.init_from) / stage, expect_codec=corpus.codec_identity,
                expect_text_vocab=text_vocab_identity(corpus.vocab.to_dict()))
            continue
        settings = getattr(cfg, stage)
        if getattr(settings, "duration_guided", False) and not corpus.has_durations:
            raise SystemExit(f"--ar.duration_guided needs durations in {corpus.directory}: "
                             f"run `python recipes/align.py --tokens {corpus.directory}` first")
        models[stage] = model_class(fitted_to(settings, corpus, stage))
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
    aligner's durations where the corpus has them) for the layer that focuses most. For a NAR of a
    codec with a pitch stream also its most likely pitch codes against the true ones (`nar/pitch/*`:
    the share of frames whose voicing it gets right, and of the frames both call voiced the share
    within a semitone). Returns the figures and, for the first item, that layer's attention
    [T, N] and its text ids [N] (None without an AR).
    """
    for model in models.values():
        model.eval()
    sums: dict[str, list[float]] = {}
    generator = torch.Generator().manual_seed(seed)
    attention_figures, first_attention = {}, None
    pitch = torch.zeros(4, dtype=torch.float64)  # codec.pitch.pitch_agreement's sums

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
                out = models["nar"](*args, stage=j)
                add(f"nar/codebook_{j}", out)
                if models["nar"].pitch_bins and j - 1 == PITCH_ROW:
                    mask = frame_mask(batch.code_lengths, batch.codes.shape[2])
                    pitch += pitch_agreement(out.logits.argmax(-1), batch.codes[:, PITCH_ROW], mask,
                                             models["nar"].pitch_bins)
    for model in models.values():
        model.train()
    result = {}
    for name, (loss, top1, top10, n) in sums.items():
        n = max(n, 1.0)
        result.update({f"{name}/loss": loss / n, f"{name}/top1": top1 / n, f"{name}/top10": top10 / n})
    if pitch[0]:
        result["nar/pitch/voicing"] = float(pitch[1] / pitch[0])
        result["nar/pitch/within_semitone"] = float(pitch[3] / pitch[2].clamp(min=1))
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
        from codec.loading import load_codec

        codec = load_codec(cfg.codec)
        corpus.check_codec(codec.identity)
        codec.save_pretrained(model_dir / "codec")
    return model_dir


def save_snapshot(models: dict[str, PretrainedLM], run_dir: Path, step: int, seconds: float) -> Path:
    """snapshots/<stages>-step-<step>/ (stages "ar", "nar" or "ar+nar"): each model as `save_pretrained`
    writes it, and training.json with the step and the wall seconds of training so far (over every
    resumed run, validation included), written last: a snapshot without it is not one."""

    def write(directory: Path) -> None:
        for stage, model in models.items():
            model.save_pretrained(directory / stage)
        (directory / "training.json").write_text(json.dumps({"stages": list(models), "step": step,
                                                             "seconds": round(seconds, 1)}, indent=2) + "\n")

    return write_directory(run_dir / "snapshots" / f"{'+'.join(models)}-step-{step:06d}", write, marker="training.json")


def snapshots(run_dir: str | Path, stage: str) -> list[tuple[Path, dict]]:
    """The snapshots of `stage` ("ar", "nar" or "ar+nar") in `run_dir`, by step: [(directory, training.json)]."""
    found = sorted(Path(run_dir, "snapshots").glob(f"{stage}-step-*/training.json"))
    return [(path.parent, json.loads(path.read_text())) for path in found]


class BatchStream:
    """The training batches, epoch after epoch, from where the sampler stands (mid-epoch after a
    resume). `state_dict` counts the batches handed to the loop, not those a worker fetched ahead."""

    def __init__(self, loader: DataLoader, sampler: FrameBudgetBatchSampler, dataset: LMDataset):
        self.loader, self.sampler, self.dataset = loader, sampler, dataset
        self.epoch, self.consumed = sampler.epoch, sampler.position

    def __iter__(self):
        while True:
            self.sampler.set_epoch(self.epoch)
            self.dataset.set_epoch(self.epoch)
            self.consumed = self.sampler.position
            for batch in self.loader:
                self.consumed += 1
                yield batch
            self.epoch += 1

    def state_dict(self) -> dict:
        return self.sampler.state_dict(consumed=self.consumed)


def load_data(cfg: TrainLMConfig, accelerator) -> tuple[TokenCorpus, BatchStream, DataLoader | None]:
    """The training corpus, its batches for this process, and the dev batches (None without a dev split)."""
    train = TokenCorpus.open(cfg.tokens, splits=cfg.train_split)
    dataset = LMDataset(train, cfg.prompt, seed=cfg.seed)
    sampler = FrameBudgetBatchSampler(
        dataset.lengths(), cfg.max_frames, max_batch_size=cfg.max_batch_size, seed=cfg.seed,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index,
    )  # fmt: skip
    if len(sampler) == 0:
        raise SystemExit(f"{cfg.tokens} ({cfg.train_split}) gives no batch under max_frames={cfg.max_frames}")
    # The sampler gives each process its share already: the loader is not passed to accelerator.prepare.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=cfg.num_workers)
    dev_loader = None
    if cfg.dev_split in TokenCorpus.open(cfg.tokens).splits:
        dev = LMDataset(TokenCorpus.open(cfg.tokens, splits=cfg.dev_split), cfg.prompt, seed=cfg.seed + 1)
        dev_sampler = FrameBudgetBatchSampler(dev.lengths(), cfg.max_frames, max_batch_size=cfg.max_batch_size,
                                              shuffle=False, num_replicas=1, rank=0)
        dev_loader = DataLoader(dev, batch_sampler=dev_sampler, collate_fn=dev.collate)
    return train, BatchStream(loader, sampler, dataset), dev_loader


def build_optimizer(cfg: TrainLMConfig, models: dict[str, PretrainedLM]) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    params = [p for model in models.values() for p in model.parameters()]
    return adamw(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )  # fmt: skip


def target_count(stage: str, batch: LMBatch) -> int:
    """The target tokens a model's loss averages over: every frame, and for the AR each item's EOS."""
    return int(batch.code_lengths.sum()) + (len(batch) if stage == "ar" else 0)


def train_step(accelerator, models: dict[str, torch.nn.Module], micro_batches: list[LMBatch],
               optimizer: torch.optim.Optimizer, n_q: int, generator: torch.Generator,
               grad_clip: float) -> tuple[dict[str, LMOutput], float]:
    """One optimizer step over `micro_batches` (gradient accumulation) -> the last one's outputs, the gradient norm.

    Each micro-batch's loss weighs by its share of the step's target tokens over every process
    (DDP averages gradients over processes), so the step is the one a single batch of all of them
    would take; frame-budget batches differ in size, and a plain average of their losses would not be.
    """
    totals = torch.tensor([sum(target_count(s, b) for b in micro_batches) for s in models], dtype=torch.float32,
                          device=accelerator.device)
    totals = dict(zip(models, accelerator.reduce(totals, reduction="sum").tolist()))
    for i, batch in enumerate(micro_batches):
        with ExitStack() as stack:
            if i < len(micro_batches) - 1:  # gradients are all-reduced once, after the last micro-batch
                for model in models.values():
                    stack.enter_context(accelerator.no_sync(model))
            outputs = run_models(models, batch, n_q, generator)
            loss = sum(out.loss * (target_count(s, batch) * accelerator.num_processes / totals[s])
                       for s, out in outputs.items())
            accelerator.backward(loss)
    params = [p for model in models.values() for p in model.parameters()]
    grad_norm = float(accelerator.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return outputs, grad_norm


def log_validation(run: Run, models: dict[str, PretrainedLM], dev_loader: DataLoader, corpus: TokenCorpus,
                   step: int) -> None:
    """Validate, and show it: TensorBoard scalars and the attention plot, a line, validation-<stage>.json."""
    cfg = run.config
    result, attention = validate(models, dev_loader, cfg.val_batches, corpus.n_q, run.accelerator.device,
                                 seed=cfg.seed)
    run.accelerator.log({f"val/{k}": v for k, v in result.items()}, step=step)
    if attention is not None:
        from app.figures import attention_figure

        weights, text_ids = attention
        figure = attention_figure(weights.numpy(), corpus.vocab.decode(text_ids.tolist()), corpus.frame_rate,
                                  title=f"dev item 1, step {step}")
        run.accelerator.get_tracker("tensorboard").writer.add_figure("val/ar/attention", figure, step)
    shown = ", ".join(f"{k.removesuffix('/top1').replace('/codebook_', ' q')} {v:.3f}"
                      for k, v in result.items() if k.endswith("top1"))
    instruments = ", ".join(f"{k.removeprefix('ar/')} {v:.3f}" for k, v in result.items()
                            if k == "ar/reading_gap" or k.startswith(("ar/attention/", "nar/pitch/")))
    tqdm.write(f"step {step}: dev top-1 accuracy: {shown}" + (f"; {instruments}" if instruments else ""))
    (run.directory / f"validation-{cfg.stage}.json").write_text(json.dumps({"step": step, **result}, indent=2))


def train_logs(outputs: dict[str, LMOutput], lr: float, grad_norm: float, frames_per_second: float) -> dict[str, float]:
    logs = {"train/lr": lr, "train/grad_norm": grad_norm, "train/frames_per_second": frames_per_second}
    for stage, out in outputs.items():
        logs.update({f"train/{stage}/loss": out.loss.item(), f"train/{stage}/top1": out.top1.item(),
                     f"train/{stage}/top10": float(out.top10)})
        if getattr(out, "advance_loss", None) is not None:
            logs.update({f"train/{stage}/advance_loss": out.advance_loss.item(),
                         f"train/{stage}/advance_accuracy": float(out.advance_accuracy)})
    return logs


def main(argv: list[str] | None = None) -> Path:
    # DDP: the NAR's per-codebook heads are not all used by every batch. Accumulation is done
    # here (train_step), weighted by tokens, not by Accelerate's equal-batch average.
    run = start_run(TrainLMConfig, argv, description=__doc__, preset_dir=CONFIG_DIR / "lm", tracker=lambda c: f"lm-{c.stage}",
                    # `--stage ar` then `--stage nar` can share a run directory
                    checkpoints=lambda c: f"checkpoints-{c.stage}", accelerate_accumulation=False,
                    kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    cfg, accelerator = run.config, run.accelerator
    stages = ["ar", "nar"] if cfg.stage == "both" else [cfg.stage]
    train, batches, dev_loader = load_data(cfg, accelerator)
    if "nar" in stages and train.n_q < 2:
        raise SystemExit(f"the corpus' codec has {train.n_q} codebook: there is nothing for the NAR to fill; use --stage ar")
    models = build_models(cfg, train, stages)
    for stage, model in models.items():
        setattr(cfg, stage, model.config)  # the saved config says what was trained
    run.save_config(f"config-{cfg.stage}.yaml")
    optimizer = build_optimizer(cfg, models)
    *prepared, optimizer = accelerator.prepare(*models.values(), optimizer)
    wrapped = dict(zip(models, prepared))

    state = run.restore()
    step = state["step"] if state else 0
    seconds_before = state.get("seconds", 0.0) if state else 0.0  # training wall time of the earlier runs
    if state:
        batches.sampler.load_state_dict(state["sampler"])
        batches.epoch = batches.sampler.epoch
    for stage, model in models.items():
        accelerator.print(f"{stage}: {model.num_parameters() / 1e6:.2f} M parameters")
    accelerator.print(
        f"{len(train)} training utterances ({train.hours:.2f} h), {len(batches.sampler)} batches an epoch per process, "
        f"codec {train.n_q} x {train.codec_identity.codebook_size} at {train.frame_rate:g} Hz"
    )

    generator = torch.Generator().manual_seed(cfg.seed * 1000 + accelerator.process_index + step)
    progress = tqdm(total=cfg.steps, initial=step, desc=f"lm {cfg.stage}", disable=not run.is_main)
    started = clock = time.perf_counter()
    frames_seen = 0
    stream = iter(batches)
    while step < cfg.steps:
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        set_lr(optimizer, lr)
        micro_batches = [next(stream).to(accelerator.device) for _ in range(cfg.gradient_accumulation_steps)]
        outputs, grad_norm = train_step(accelerator, wrapped, micro_batches, optimizer, train.n_q, generator,
                                        cfg.grad_clip)
        frames_seen += sum(int(b.code_lengths.sum()) for b in micro_batches) * accelerator.num_processes
        step += 1
        progress.update(1)

        if cfg.due(step, cfg.log_every):
            elapsed = time.perf_counter() - clock
            accelerator.log(train_logs(outputs, lr, grad_norm, frames_seen / elapsed), step=step)
            progress.set_postfix({f"{s}_loss": f"{o.loss.item():.3f}" for s, o in outputs.items()}
                                 | {"frames/s": f"{frames_seen / elapsed:.0f}"})
            frames_seen, clock = 0, time.perf_counter()
        if dev_loader is not None and cfg.due(step, cfg.val_every):
            if run.is_main:
                log_validation(run, {s: accelerator.unwrap_model(m) for s, m in wrapped.items()}, dev_loader, train, step)
            accelerator.wait_for_everyone()
        seconds = seconds_before + time.perf_counter() - started
        if cfg.snapshot_every and cfg.due(step, cfg.snapshot_every):
            if run.is_main:
                save_snapshot({s: accelerator.unwrap_model(m) for s, m in wrapped.items()}, run.directory, step, seconds)
            accelerator.wait_for_everyone()
        if cfg.due(step, cfg.checkpoint_every):
            run.checkpoint(step, {"sampler": batches.state_dict(), "seconds": seconds})

    progress.close()
    accelerator.wait_for_everyone()
    model_dir = run.directory / "model"
    if run.is_main:
        export(cfg, {s: accelerator.unwrap_model(m) for s, m in wrapped.items()}, train, run.directory)
        accelerator.print(f"model exported to {model_dir}")
    accelerator.end_training()
    return model_dir


if __name__ == "__main__":
    main()
