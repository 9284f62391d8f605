"""Align a tokenized corpus: train Echo's aligner on it, then write every utterance's durations.

    python recipes/align.py --tokens runs/quickstart/tokens --run_dir runs/quickstart/aligner
    python recipes/align.py --tokens runs/libritts/tokens --run_dir runs/libritts/aligner --steps 4000

The aligner (lm/aligner.py) learns from the tokens themselves, with no external tool, which
text token each codec frame speaks; the duration-guided AR trains on the result. The run
directory receives config.yaml, the TensorBoard logs, the aligner in `model/` and `alignment.png`
(one utterance's soft and hard alignment); the token directory receives one
`shard-*.durations.safetensors` beside each shard. A rerun with `--resume` keeps a trained
aligner and writes only the shards still missing their durations.

On the built-in corpus the true phoneme timings are known (eSpeak NG reports them; see
data/phoneme_timings.py), and `alignment.json` also says how far the aligner's phoneme
boundaries are from them, in frames: `boundary_error_frames` (mean) and
`boundary_error_frames_median` of the absolute error over the boundaries that could be matched,
`boundary_offset_frames` (the mean signed error; > 0: the aligner is late), `boundaries_matched`
(their share of eSpeak's boundaries) and `utterances_with_timings`. The timings are read from
`--timings PATH`, by default from `corpus/phoneme_timings.jsonl` beside the token directory
(the quickstart's layout) when it exists; flite utterances and real corpora have none.

    python recipes/align.py --tokens runs/qs/tokens --run_dir runs/qs/aligner --resume \
        --timings runs/qs/corpus/phoneme_timings.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from data.lm_data import FrameBudgetBatchSampler
from data.phoneme_timings import (
    TIMINGS_FILE,
    UtteranceTimings,
    boundary_errors,
    read_timings,
    summarize_boundary_errors,
)
from data.tokens import TokenCorpus, durations_path, write_durations
from lm.aligner import Aligner, AlignerConfig, hard_durations
from lm.layout import frame_mask
from lm.pretrained import text_vocab_identity
from recipes.training import adamw, load_config, lr_at, save_config


@dataclass
class AlignConfig:
    tokens: str = "runs/quickstart/tokens"
    run_dir: str = "runs/quickstart/aligner"
    d_model: int = 128
    n_layers: int = 3
    align_dim: int = 80
    steps: int = 600  # about 1.5 min on 2 cores; its alignment of the built-in corpus is clean by then
    max_frames: int = 8000  # frames per batch (items x longest item)
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    log_every: int = 25
    seed: int = 0
    timings: str = ""  # the corpus's phoneme_timings.jsonl; "": corpus/phoneme_timings.jsonl beside `tokens`, if any


def pad_batch(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TokenItems -> text [B, N], text_lengths [B], codes [B, K, T], code_lengths [B] (padded with 0)."""
    text_lengths = torch.tensor([len(it.text) for it in items])
    code_lengths = torch.tensor([it.codes.shape[1] for it in items])
    K = items[0].codes.shape[0]
    text = torch.zeros(len(items), int(text_lengths.max()), dtype=torch.long)
    codes = torch.zeros(len(items), K, int(code_lengths.max()), dtype=torch.long)
    for b, it in enumerate(items):
        text[b, : len(it.text)] = it.text
        codes[b, :, : it.codes.shape[1]] = it.codes
    return text, text_lengths, codes, code_lengths


def train(cfg: AlignConfig, corpus: TokenCorpus, run_dir: Path) -> Aligner:
    torch.manual_seed(cfg.seed)
    codec = corpus.codec_identity
    aligner = Aligner(AlignerConfig(
        text_vocab_size=len(corpus.vocab), text_pad_id=corpus.vocab.pad_id, codebook_size=codec.codebook_size,
        n_q=codec.n_q, codec=codec.to_dict(), text_vocab=text_vocab_identity(corpus.vocab.to_dict()),
        d_model=cfg.d_model, n_layers=cfg.n_layers, align_dim=cfg.align_dim,
    )).train()  # fmt: skip
    optimizer = adamw(aligner.parameters(), lr=cfg.lr)
    usable = [i for i, r in enumerate(corpus.records) if r.n_frames >= r.n_text_tokens]
    sampler = FrameBudgetBatchSampler([corpus.records[i].n_frames for i in usable], cfg.max_frames, seed=cfg.seed)
    writer = SummaryWriter(str(run_dir / "logs"))
    progress = tqdm(total=cfg.steps, desc="aligner")
    step, epoch, clock = 0, 0, time.perf_counter()
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        for batch in sampler:
            text, text_lengths, codes, code_lengths = pad_batch([corpus[usable[i]] for i in batch])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
            loss = aligner(text, text_lengths, codes, code_lengths).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(aligner.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            progress.update(1)
            if step % cfg.log_every == 0:
                writer.add_scalar("train/forward_sum_loss", loss.item(), step)
                progress.set_postfix(loss=f"{loss.item():.3f}")
            if step >= cfg.steps:
                break
        epoch += 1
    progress.close()
    writer.close()
    print(f"aligner: {cfg.steps} steps in {time.perf_counter() - clock:.0f} s, final loss {loss.item():.3f}")
    return aligner.eval()


def write_all_durations(aligner: Aligner, corpus: TokenCorpus, max_frames: int) -> dict[str, float]:
    """Durations for every shard still missing them; returns summary statistics of the alignment
    (frames per token, share of one-frame tokens and, for the shards aligned now, the mean
    largest soft-alignment weight per frame)."""
    by_shard: dict[str, list[int]] = {}
    for i, record in enumerate(corpus.records):
        by_shard.setdefault(record.shard, []).append(i)
    frames, single, focus, n_tokens = 0, 0, 0.0, 0
    for shard, indices in tqdm(sorted(by_shard.items()), desc="durations"):
        if durations_path(corpus.directory, shard).is_file():
            continue
        records = sorted((corpus.records[i] for i in indices), key=lambda r: r.text_offset)
        start = records[0].text_offset
        flat = torch.zeros(sum(r.n_text_tokens for r in records), dtype=torch.long)  # laid out like the shard's text
        for chunk in _chunks(indices, corpus, max_frames):
            text, text_lengths, codes, code_lengths = pad_batch([corpus[i] for i in chunk])
            fits = code_lengths >= text_lengths  # MAS needs a frame per token; the others are spread evenly
            durations = torch.zeros_like(text)
            if fits.any():
                keep = fits.nonzero()[:, 0]
                with torch.no_grad():
                    log_probs = aligner(text[keep], text_lengths[keep], codes[keep], code_lengths[keep]).log_probs
                durations[keep] = hard_durations(log_probs, text_lengths[keep], code_lengths[keep])
                real = frame_mask(code_lengths[keep], codes.shape[2])
                focus += float(log_probs.exp().amax(-1)[real].sum())
            for b, i in enumerate(chunk):
                record = corpus.records[i]
                N = record.n_text_tokens
                d = durations[b, :N] if fits[b] else _even(N, record.n_frames)
                flat[record.text_offset - start : record.text_offset - start + N] = d
                frames, single, n_tokens = frames + int(d.sum()), single + int((d == 1).sum()), n_tokens + N
        write_durations(corpus.directory, shard, flat)
    if n_tokens == 0:  # every shard was aligned before: describe the durations on disk
        durations = torch.cat([corpus[i].durations for i in range(len(corpus))])
        return {"frames_per_token": float(durations.float().mean()), "one_frame_tokens": float((durations == 1).float().mean())}
    return {"frames_per_token": frames / n_tokens, "one_frame_tokens": single / n_tokens,
            "focus_rate": focus / max(frames, 1)}


def _chunks(indices: list[int], corpus: TokenCorpus, max_frames: int) -> Iterator[list[int]]:
    """`indices` in order, cut into runs whose padded size (items x longest) stays within max_frames."""
    chunk, longest = [], 0
    for i in indices:
        n = corpus.records[i].n_frames
        if chunk and (len(chunk) + 1) * max(longest, n) > max_frames:
            yield chunk
            chunk, longest = [], 0
        chunk.append(i)
        longest = max(longest, n)
    if chunk:
        yield chunk


def _even(N: int, T: int) -> torch.Tensor:
    """A fallback for an utterance with fewer frames than tokens: as even as the frames allow (some get 0)."""
    edges = torch.linspace(0, T, N + 1).round().long()
    return edges[1:] - edges[:-1]


def find_timings(cfg: AlignConfig) -> Path | None:
    """The phoneme timings to check the durations against: `cfg.timings`, else the quickstart's corpus's, else None."""
    if cfg.timings:
        return Path(cfg.timings)
    beside = Path(cfg.tokens).parent / "corpus" / TIMINGS_FILE
    return beside if beside.is_file() else None


def timing_error(corpus: TokenCorpus, timings: dict[str, UtteranceTimings]) -> dict[str, float]:
    """How far the durations on disk put each phoneme's start from its true start, in frames, over the
    utterances that have timings (an utterance whose text differs from the timings' is another one)."""
    if not corpus.has_durations:
        raise ValueError(f"{corpus.directory} has no durations to check; align it first")
    matches = []
    for i, record in enumerate(corpus.records):
        truth = timings.get(record.id)
        if truth is None or truth.text != record.text:
            continue
        item = corpus[i]
        symbols = corpus.vocab.decode(item.text.tolist())
        matches.append(boundary_errors(symbols, item.durations.tolist(), truth.phonemes, corpus.frame_rate))
    return summarize_boundary_errors(matches)


def plot_alignment(aligner: Aligner, corpus: TokenCorpus, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    item = corpus[next(i for i, r in enumerate(corpus.records) if r.n_frames >= r.n_text_tokens)]
    text, text_lengths, codes, code_lengths = pad_batch([item])
    with torch.no_grad():
        log_probs = aligner(text, text_lengths, codes, code_lengths).log_probs
    soft = log_probs[0].exp()  # [T, N]
    durations = hard_durations(log_probs, text_lengths, code_lengths)[0]
    hard = torch.zeros_like(soft)
    hard[torch.arange(soft.shape[0]), torch.repeat_interleave(torch.arange(len(durations)), durations)] = 1
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, image, title in zip(axes, (soft, hard), ("soft alignment", "durations (monotonic search)")):
        ax.imshow(image.T.numpy(), origin="lower", aspect="auto", interpolation="none")
        ax.set(title=f"{item.id}: {title}", xlabel="frame", ylabel="text token")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", action="store_true", help="keep a trained aligner; write the missing durations")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(AlignConfig, None, overrides)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = TokenCorpus.open(cfg.tokens)
    model_dir = run_dir / "model"
    if args.resume and (model_dir / "config.json").is_file():
        aligner = Aligner.from_pretrained(model_dir, expect_codec=corpus.codec_identity)
    else:
        save_config(cfg, run_dir / "config.yaml")
        aligner = train(cfg, corpus, run_dir)
        aligner.save_pretrained(model_dir)
        for shard in {r.shard for r in corpus.records}:  # durations of an earlier aligner are stale now
            durations_path(corpus.directory, shard).unlink(missing_ok=True)
    stats = write_all_durations(aligner, TokenCorpus.open(cfg.tokens), cfg.max_frames)
    timings_path = find_timings(cfg)
    if timings_path is not None:
        stats |= timing_error(TokenCorpus.open(cfg.tokens), read_timings(timings_path))
        if not stats["utterances_with_timings"]:
            print(f"alignment: no utterance of {cfg.tokens} has its phoneme timings in {timings_path}")
    plot_alignment(aligner, corpus, run_dir / "alignment.png")
    (run_dir / "alignment.json").write_text(json.dumps(stats, indent=2) + "\n")
    print("alignment: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
    return stats


if __name__ == "__main__":
    main()
