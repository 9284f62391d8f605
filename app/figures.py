"""Figures for an evaluation report: training curves from TensorBoard logs, and where the AR model looks.

    curves = read_scalars("runs/lm-cpu")                       # tag -> [(step, value)], from RUN/logs
    plot_training_curves(curves, "eval/plots/curves", "lm")   # one figure per kind of curve
    weights, tokens, n_prompt = ar_attention(tts, synthesis)    # [T, N]: written frames onto text tokens
    plot_attention(weights, tokens, "eval/plots/attention.png", tts.frame_rate)
    fig = attention_figure(weights, tokens, frame_rate)          # the same, as a figure (TensorBoard)

The attention map comes from one teacher-forced pass over the synthesized codebook 1
(`ARModel.text_attention`, which forms the weights the fused attention kernel never shows), in
the layer whose frames focus most on single tokens.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from app.tts import TTS, Synthesis
from data.plots import plot_curves

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    """The AR model's attention (mean over heads) from each written frame onto the text, in the
    layer that focuses most (`ARModel.text_attention`, lm/reading.py).

    Returns (weights [T, N], the N text tokens, how many of them are the prompt's transcript):
    row t is the position that wrote frame t; each row is that position's attention onto the
    text, renormalized to sum to 1 (the rest went to the audio).
    """
    segment = synthesis.segments[chunk]
    codes1 = segment.chosen.codes1.long().to(tts.device)  # [T]
    # the token sequence exactly as generate() built it (with the prompt's transcript, when the voice has one)
    texts, prompt_text_length = tts._texts([segment.chunk.text], synthesis.voice, segment.chosen.language)
    text = torch.tensor(texts[0], dtype=torch.long, device=tts.device)  # [N]
    prompt = synthesis.voice.codes.long().to(tts.device)  # [K, P]
    N, P, T = text.shape[0], prompt.shape[1], codes1.shape[0]
    alignment = segment.chosen.alignment
    maps = tts.ar.text_attention(
        text[None], torch.tensor([N], device=tts.device), prompt[None], torch.tensor([P], device=tts.device),
        codes1[None, None], torch.tensor([T], device=tts.device),
        alignment=None if alignment is None else alignment[None].to(tts.device))  # [layers, 1, T, N]
    best = max(range(maps.shape[0]), key=lambda k: float(maps[k, 0].amax(-1).mean()))
    tokens = tts.frontend.vocab.decode(texts[0])
    return maps[best, 0].float().cpu().numpy(), tokens, prompt_text_length


def plot_attention(weights: np.ndarray, tokens: Sequence[str], path: str | Path, frame_rate: float,
                   title: str = "", prompt_text_length: int = 0, spoken: np.ndarray | None = None) -> Path:
    """`attention_figure`, written to `path`."""
    from data.plots import save_figure

    return save_figure(attention_figure(weights, tokens, frame_rate, title, prompt_text_length, spoken), path)


def attention_figure(weights: np.ndarray, tokens: Sequence[str], frame_rate: float, title: str = "",
                     prompt_text_length: int = 0, spoken: np.ndarray | None = None) -> "Figure":
    """Text tokens (rows) against target frames in seconds (columns), each frame's text attention
    scaled to sum to 1, so that an alignment reads as a diagonal whatever the share left to the audio.

    prompt_text_length: how many of the first tokens are the prompt's transcript (a dashed line ends them).
    spoken [T]: the token each frame was written for (a duration-guided AR's pointer), drawn as a red line.
    """
    from matplotlib.figure import Figure

    weights = np.asarray(weights, dtype=np.float64)  # [T, N]
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
    if spoken is not None:
        seconds = (np.arange(len(spoken)) + 0.5) / frame_rate
        ax.step(seconds, np.asarray(spoken), where="mid", color="red", linewidth=0.8, label="token spoken")
        ax.legend(loc="upper left", fontsize=6)
    ax.set_xlabel("target time (s)")
    ax.set_ylabel("text token")
    ax.set_title(title or "AR attention onto the text")
    fig.colorbar(image, ax=ax, label="share of the frame's text attention")
    return fig
