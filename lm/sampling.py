"""Sampling from logits, as pure functions.

Letters: B batch, C vocabulary (codebook size + EOS for the AR model), W window.

Each function takes logits [B, C] and returns new logits or token ids [B]; none keeps state.
The AR driver (`lm/generation.py`) calls `sample_next` once per step with the tokens it has
written so far, so repetition-aware sampling sees the recent history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How the AR model picks its next token.

    temperature: divides the logits; 0 means greedy.
    top_k: keep the k most likely tokens (0: all).
    top_p: keep the smallest set of tokens whose probability reaches p (1.0: all).
    repetition_window: VALL-E 2's repetition-aware sampling looks at this many recent tokens...
    repetition_threshold: ...and when the sampled token already makes up at least this share
        of them, it samples again from the full distribution (temperature only) instead of
        the truncated one. 0 turns it off.
    cfg_scale: classifier-free guidance on the text. Above 1, the AR also runs with its phonemes
        hidden and samples from uncond + cfg_scale x (cond - uncond) logits, which favours the
        codes the text makes likely over those the voice alone would; 1 is plain sampling; None
        (the default) takes the model's own: `DEFAULT_CFG_SCALE` for an AR trained with
        `text_dropout` (lm/ar.py), which guidance needs, and 1 for any other.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_window: int = 10
    repetition_threshold: float = 0.1
    cfg_scale: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_window < 1:
            raise ValueError(f"repetition_window must be >= 1, got {self.repetition_window}")
        if not 0.0 <= self.repetition_threshold <= 1.0:
            raise ValueError(f"repetition_threshold is a share of the window in [0, 1], got {self.repetition_threshold}")
        if self.cfg_scale is not None and self.cfg_scale < 1.0:
            raise ValueError(f"cfg_scale must be >= 1 (1: no guidance), or None for the model's own; got {self.cfg_scale}")


# The guidance an AR trained with text dropout samples with unless told otherwise (README: classifier-free
# guidance): on the quickstart, 2.5 removed 8 % of the word errors with the prompt's transcript and 6 % without
# it, for 0.01-0.02 of similarity to the speaker; 4 removed about as many, and took similarity from 0.75 to 0.70.
DEFAULT_CFG_SCALE = 2.5


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: logits [B, C] with and without the condition -> uncond + scale x (cond - uncond)."""
    return unconditional + scale * (conditional - unconditional)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [B, C] / temperature (temperature > 0)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (use greedy for 0), got {temperature}")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf; k = 0 or k >= C keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep, per row, the most likely tokens until their probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, C]
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the tokens before it already reach p; the first always stays.
    before = probs.cumsum(dim=-1) - probs
    drop_sorted = before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from softmax(logits [B, C]) -> LongTensor [B]."""
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def repetition_share(history: torch.Tensor, tokens: torch.Tensor, window: int) -> torch.Tensor:
    """Share of the last `window` tokens of history [B, L] equal to tokens [B] -> float [B] (0 when L = 0)."""
    recent = history[:, -window:]  # [B, W]
    if recent.shape[1] == 0:
        return torch.zeros(tokens.shape[0], device=tokens.device)
    return (recent == tokens[:, None]).float().sum(dim=1) / window


def sample_next(
    logits: torch.Tensor,
    history: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token for each row of logits [B, C], given the tokens written so far [B, L].

    Greedy when temperature is 0. Otherwise nucleus/top-k sampling, and VALL-E 2's
    repetition-aware step: where the chosen token already fills `repetition_threshold`
    of the recent window, draw again from the whole (temperature-scaled) distribution,
    which breaks the loops that truncated sampling falls into.
    """
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    scaled = apply_temperature(logits.float(), config.temperature)
    tokens = sample(top_p_filter(top_k_filter(scaled, config.top_k), config.top_p), generator)
    if config.repetition_threshold > 0 and history.shape[1] > 0:
        repeated = repetition_share(history, tokens, config.repetition_window) >= config.repetition_threshold
        if bool(repeated.any()):
            resampled = sample(scaled, generator)
            tokens = torch.where(repeated, resampled, tokens)
    return tokens
