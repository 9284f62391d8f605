"""Figures for an evaluation report: training curves from TensorBoard logs, and where the AR model looks.

    curves = read_scalars("runs/lm-cpu")                       # tag -> [(step, value)], from RUN/logs
    plot_training_curves(curves, "eval/plots/curves", "lm")   # one figure per kind of curve
    weights = ar_attention(tts, synthesis)                      # [T + 1, N]: target frames onto text tokens
    plot_attention(weights, tokens, "eval/plots/attention.png", tts.frame_rate)

The attention map is read from outside the model: a forward pre-hook on the last block's
attention catches its input and mask during one teacher-forced forward pass over the
synthesized codebook 1, and the weights are recomputed from the block's own projections
(the model itself calls a fused kernel that never forms them).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from app.tts import TTS, Synthesis
from data.plots import plot_curves

Curves = dict[str, list[tuple[float, float]]]


# -- training curves ----------------------------------------------------------------------------------


def read_scalars(run_dir: str | Path) -> Curves:
    """Every scalar logged under `run_dir` (its logs/ folder when it has one): tag -> [(step, value)] by step.

    Event files are read in name order (their names start with the time they were opened), so
    a step logged again after a resume keeps its latest value.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    root = run_dir / "logs" if (run_dir / "logs").is_dir() else run_dir
    files = sorted(root.rglob("events.out.tfevents.*"), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {root}; give a run directory written by "
                                "recipes/train_codec.py or recipes/train_lm.py")
    points: dict[str, dict[float, float]] = defaultdict(dict)
    for path in files:
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            for event in events.Scalars(tag):
                points[tag][float(event.step)] = float(event.value)
    return {tag: sorted(values.items()) for tag, values in sorted(points.items())}


def curve_group(tag: str) -> str:
    """Which figure a tag goes to: its last part without a codebook or bitrate number.

    "train/ar/loss" and "val/nar/codebook_2/loss" -> "loss"; "val/mel_distance_q4" -> "mel_distance";
    "codebooks/perplexity_3" -> "perplexity".
    """
    return re.sub(r"_q?\d+$", "", tag.rsplit("/", 1)[-1])


def plot_training_curves(curves: Mapping[str, Sequence[tuple[float, float]]], out_dir: str | Path,
                         name: str) -> list[Path]:
    """One figure per curve group (`curve_group`) at `out_dir/<name>_<group>.png`; losses on a log scale."""
    groups: dict[str, dict[str, Sequence[tuple[float, float]]]] = defaultdict(dict)
    for tag, points in curves.items():
        groups[curve_group(tag)][tag] = points
    written = []
    for group, series in sorted(groups.items()):
        log_y = any(word in group for word in ("loss", "mel", "distance", "norm"))
        written.append(plot_curves(series, Path(out_dir) / f"{name}_{group}.png", f"{name}: {group}",
                                   ylabel=group, log_y=log_y))
    return written


# -- AR attention ----------------------------------------------------------------------------------------


@torch.inference_mode()
def ar_attention(tts: TTS, synthesis: Synthesis, chunk: int = 0) -> tuple[np.ndarray, list[str], int]:
    """The AR model's last-layer attention (mean over heads) from each target position onto the text.

    Returns (weights [T + 1, N], the N text tokens, how many of them are the prompt's transcript):
    row 0 is BOS (it predicts frame 1), row t predicts frame t + 1 or EOS. Each row holds the
    share of that position's attention that goes to each text token; the rest went to the audio.
    """
    segment = synthesis.segments[chunk]
    codes1 = segment.chosen.codes1.long().to(tts.device)  # [T]
    # the token sequence exactly as generate() built it (with the prompt's transcript, when the voice has one)
    texts, prompt_text_length = tts._texts([segment.chunk.text], synthesis.voice, segment.chosen.language)
    text = torch.tensor(texts[0], dtype=torch.long, device=tts.device)  # [N]
    prompt = synthesis.voice.codes.long().to(tts.device)  # [K, P]
    N, P, T = text.shape[0], prompt.shape[1], codes1.shape[0]
    attention = tts.ar.transformer.blocks[-1].attention
    caught = {}

    def catch(module, args):
        caught["x"], caught["mask"] = args[0], args[1]

    handle = attention.register_forward_pre_hook(catch)
    try:
        tts.ar(text[None], torch.tensor([N], device=tts.device), prompt[None], torch.tensor([P], device=tts.device),
               codes1[None, None], torch.tensor([T], device=tts.device))
    finally:
        handle.remove()
    x, mask = caught["x"], caught["mask"]  # [1, L, D], [1, 1, L, L] bool
    B, L, D = x.shape
    H = attention.n_heads
    q, k, _ = attention.qkv(x).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)  # [B, H, L, Dh] each
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D // H)  # [B, H, L, L]
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1).mean(1)[0]  # [L, L]
    target = weights[N + P : N + P + T + 1, :N]  # [T + 1, N]: BOS and the frames, onto the text
    tokens = tts.frontend.vocab.decode(texts[0])
    return target.float().cpu().numpy(), tokens, prompt_text_length


def plot_attention(weights: np.ndarray, tokens: Sequence[str], path: str | Path, frame_rate: float,
                   title: str = "", prompt_text_length: int = 0) -> Path:
    """Text tokens (rows) against target frames in seconds (columns), each frame's text attention
    scaled to sum to 1, so that an alignment reads as a diagonal whatever the share left to the audio.

    prompt_text_length: how many of the first tokens are the prompt's transcript (a dashed line ends them).
    """
    from matplotlib.figure import Figure

    from data.plots import _save

    weights = np.asarray(weights, dtype=np.float64)  # [T + 1, N]
    share = weights.sum(axis=1, keepdims=True)
    aligned = weights / np.maximum(share, 1e-12)
    fig = Figure(figsize=(min(14.0, max(7.0, weights.shape[0] / 20)), min(12.0, max(4.0, len(tokens) / 9))),
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(aligned.T, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest",
                      extent=(0.0, weights.shape[0] / frame_rate, -0.5, len(tokens) - 0.5))
    ax.set_yticks(range(len(tokens)), labels=list(tokens), fontsize=5)
    if prompt_text_length:
        ax.axhline(prompt_text_length - 0.5, color="white", linewidth=0.8, linestyle="--")  # prompt text | sentence
    ax.set_xlabel("target time (s)")
    ax.set_ylabel("text token")
    ax.set_title(title or f"AR last-layer attention onto the text (mean share {float(share.mean()):.0%})")
    fig.colorbar(image, ax=ax, label="share of the frame's text attention")
    return _save(fig, path)
