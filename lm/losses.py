"""Cross-entropy and accuracy over the target tokens of a padded batch (labels IGNORE elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100  # label of positions without a loss: prompt frames, pads


@dataclass
class LMOutput:
    logits: torch.Tensor  # [B, T', V]: AR [B, T + 1, C + 1], NAR [B, T, C]
    loss: torch.Tensor  # scalar: mean cross-entropy over the target tokens
    top1: torch.Tensor  # scalar: share of target tokens whose label is the argmax
    top10: torch.Tensor  # scalar: share whose label is among the 10 best (all of them if V <= 10)
    n_tokens: torch.Tensor  # scalar long: target tokens the loss averages over (for weighting accumulation)


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> LMOutput:
    """logits [B, T', V], labels [B, T'] (IGNORE where there is no target) -> LMOutput."""
    keep = labels != IGNORE  # [B, T']
    n_tokens = keep.sum()
    flat_logits, flat_labels = logits[keep].float(), labels[keep]  # [M, V], [M]
    loss = F.cross_entropy(flat_logits, flat_labels) if flat_labels.numel() else logits.sum() * 0.0
    with torch.no_grad():
        best = flat_logits.topk(min(10, logits.shape[-1]), dim=-1).indices  # [M, k]
        hits = best == flat_labels[:, None]
        denominator = n_tokens.clamp(min=1)
        top1 = hits[:, 0].sum() / denominator
        top10 = hits.any(dim=-1).sum() / denominator
    return LMOutput(logits=logits, loss=loss, top1=top1, top10=top10, n_tokens=n_tokens)
