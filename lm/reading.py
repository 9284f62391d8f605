"""Is the AR reading its text? The measurements that tell, within minutes of training.

A codec LM that ignores its text still lowers its loss by continuing the prompt's voice and
the shape of speech, so the loss alone does not say whether it reads. These do:

- text ablation: the same batch with each item's text shuffled (`shuffle_text`); a model
  that reads predicts worse from shuffled text, one that guesses from the prompt does not;
- attention onto the text (`ARModel.text_attention`, renormalized over the text keys):
  `focus_rate` (mean of each frame's largest text weight; 1 = one token at a time),
  `monotonicity` (share of frame-to-frame moves of the most attended token that go forward
  by at most a few tokens), and, where the true alignment is known, `alignment_error` (mean
  distance in tokens between the most attended token and the one the frame speaks).

Letters: B batch, N text tokens, T frames.
"""

from __future__ import annotations

import torch

from lm.layout import frame_mask


def shuffle_text(text: torch.Tensor, text_lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """text [B, N] -> the same tokens of each item in a random order (pads stay in place)."""
    shuffled = text.clone()
    for b, n in enumerate(text_lengths.tolist()):
        order = torch.randperm(n, generator=generator).to(text.device)
        shuffled[b, :n] = text[b, :n][order]
    return shuffled


def attention_stats(attention: torch.Tensor, code_lengths: torch.Tensor, alignment: torch.Tensor | None = None,
                    max_jump: int = 3) -> dict[str, float]:
    """attention [B, T, N] (rows renormalized over the text; 0 on pads) -> focus_rate, monotonicity
    and, with alignment [B, T] (the token each frame speaks), alignment_error in tokens."""
    B, T, N = attention.shape
    real = frame_mask(code_lengths, T)  # [B, T]
    focus = attention.amax(-1)[real].mean()
    peak = attention.argmax(-1)  # [B, T]
    move = peak[:, 1:] - peak[:, :-1]  # [B, T - 1]
    both = real[:, 1:] & real[:, :-1]
    monotonic = ((move >= 0) & (move <= max_jump))[both].float().mean()
    stats = {"focus_rate": float(focus), "monotonicity": float(monotonic)}
    if alignment is not None:
        stats["alignment_error"] = float((peak - alignment).abs()[real].float().mean())
    return stats
