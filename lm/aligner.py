"""Echo's own aligner: which text token each codec frame speaks, learned from the corpus alone.

The duration-guided AR (lm/ar.py) needs, for every training utterance, how many frames each
phoneme lasts. No external aligner is downloaded: this small model learns the alignment from
the token shards themselves, the way RAD-TTS and NeMo's FastPitch do ("One TTS Alignment to
Rule Them All", Badlani et al. 2022):

- a text encoder (embeddings + convolutions) gives a key per token, an audio encoder (the sum
  of the K codebooks' embeddings + convolutions) a query per frame;
- the soft alignment is a softmax over the tokens of minus the squared distance, plus a
  beta-binomial prior that favours the diagonal (it speeds up learning and stays on);
- the forward-sum loss (CTC with every token in order, a blank that is never wanted) makes
  the soft alignment monotonic and complete without any label;
- monotonic alignment search (Glow-TTS) turns it into hard durations: every token gets at
  least one frame, frames advance one token at most, and the durations sum to the frames.

    aligner = Aligner(AlignerConfig(text_vocab_size=V, codebook_size=C, n_q=K))
    out = aligner(text, text_lengths, codes, code_lengths)   # out.loss to train, out.log_probs [B, T, N]
    durations = aligner.durations(text, text_lengths, codes, code_lengths)   # [B, N], 0 on pads
    durations = hard_durations(out.log_probs, text_lengths, code_lengths)    # the same, from out

Letters: B batch, N text tokens, K codebooks, T frames, D width, A the alignment space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lm.layout import check_batch, frame_mask
from lm.pretrained import LMConfig, PretrainedLM

MASKED = -1e4  # log-probability of a padded token: finite, so that CTC's gradients stay finite
BLANK_LOGPROB = -1.0  # the forward-sum's blank, scored before the softmax as in RAD-TTS


@dataclass
class AlignerConfig(LMConfig):
    """The aligner reads `d_model` (encoder width) and `n_layers` (convolutions per encoder) of
    LMConfig; `align_dim` is the space in which frames and tokens are compared."""

    model_type: ClassVar[str] = "echo_aligner"
    d_model: int = 128
    n_layers: int = 3
    n_heads: int = 1
    ffn_dim: int = 256
    dropout: float = 0.0
    align_dim: int = 80
    prior_scale: float = 1.0  # the beta-binomial prior's width (RAD-TTS's omega); 0 turns it off

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.align_dim < 1:
            raise ValueError(f"align_dim must be positive, got {self.align_dim}")
        if self.prior_scale < 0:
            raise ValueError(f"prior_scale must be >= 0, got {self.prior_scale}")


@dataclass
class AlignerOutput:
    loss: torch.Tensor  # scalar: the forward-sum loss per frame
    log_probs: torch.Tensor  # [B, T, N]: log soft alignment of each frame onto the tokens (pads MASKED)


def _conv_stack(D: int, out_dim: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(n_layers):
        layers += [nn.Conv1d(D, D, kernel_size=3, padding=1), nn.ReLU()]
    layers.append(nn.Conv1d(D, out_dim, kernel_size=1))
    return nn.Sequential(*layers)


def beta_binomial_log_prior(text_lengths: torch.Tensor, code_lengths: torch.Tensor, N: int, T: int,
                            scale: float = 1.0) -> torch.Tensor:
    """log P(token n | frame t) [B, T, N] of the beta-binomial prior, 0 outside each item's real block.

    For frame t (1-based) of T_b, token n of N_b follows BetaBinomial(N_b - 1, scale t, scale (T_b - t + 1)):
    its mode moves along the diagonal (Glow-TTS / RAD-TTS's static prior).
    """
    n = torch.arange(N, device=text_lengths.device, dtype=torch.float64)[None, None, :]  # [1, 1, N]
    t = torch.arange(1, T + 1, device=text_lengths.device, dtype=torch.float64)[None, :, None]  # [1, T, 1]
    N_b = text_lengths.double()[:, None, None]
    T_b = code_lengths.double()[:, None, None]
    a, b = scale * t, scale * (T_b - t + 1)
    b = b.clamp(min=scale * 1e-3)  # frames past T_b: masked below, kept finite here
    m = (N_b - 1).clamp(min=0)
    k = torch.minimum(n, m)  # tokens past N_b: masked below
    # log C(m, k) + log B(k + a, m - k + b) - log B(a, b)
    log_prior = (torch.lgamma(m + 1) - torch.lgamma(k + 1) - torch.lgamma(m - k + 1)
                 + _log_beta(k + a, m - k + b) - _log_beta(a, b))
    real = (n < N_b) & (t <= T_b)
    return torch.where(real, log_prior, torch.zeros_like(log_prior)).float()  # [B, T, N]


def _log_beta(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)


class Aligner(PretrainedLM):
    config_class = AlignerConfig

    def __init__(self, config: AlignerConfig):
        super().__init__(config)
        D, K, C = config.d_model, config.n_q, config.codebook_size
        self.text_embedding = nn.Embedding(config.text_vocab_size, D)
        self.code_embedding = nn.Embedding(K * C, D)  # codebook k's code c is row k C + c
        self.text_encoder = _conv_stack(D, config.align_dim, config.n_layers)
        self.audio_encoder = _conv_stack(D, config.align_dim, config.n_layers)
        self.register_buffer("codebook_offsets", torch.arange(K) * C, persistent=False)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, codes: torch.Tensor,
                code_lengths: torch.Tensor) -> AlignerOutput:
        """text [B, N], codes [B, K', T] (K' >= K; the first K are read) -> AlignerOutput."""
        check_batch(text_vocab_size=self.config.text_vocab_size, codebook_size=self.config.codebook_size,
                    text=text, text_lengths=text_lengths, prompt=codes[:, :, :0],
                    prompt_lengths=torch.zeros_like(code_lengths), prompt_codebooks=0,
                    codes=codes, code_lengths=code_lengths, code_codebooks=self.config.n_q)
        N, T = text.shape[1], codes.shape[2]
        text_real, frame_real = frame_mask(text_lengths, N), frame_mask(code_lengths, T)
        text = text.long().masked_fill(~text_real, self.config.text_pad_id)
        codes = codes[:, : self.config.n_q].long().masked_fill(~frame_real[:, None], 0)  # [B, K, T]
        keys = self.text_encoder(self.text_embedding(text).transpose(1, 2)).transpose(1, 2)  # [B, N, A]
        audio = self.code_embedding(codes + self.codebook_offsets[:, None]).sum(1)  # [B, T, D]
        queries = self.audio_encoder(audio.transpose(1, 2)).transpose(1, 2)  # [B, T, A]
        scores = -torch.cdist(queries, keys).pow(2)  # [B, T, N]
        if self.config.prior_scale > 0:
            scores = scores + beta_binomial_log_prior(text_lengths, code_lengths, N, T, self.config.prior_scale)
        scores = scores.masked_fill(~text_real[:, None, :], MASKED)
        log_probs = scores.log_softmax(-1)  # [B, T, N]
        return AlignerOutput(forward_sum_loss(log_probs, text_lengths, code_lengths), log_probs)

    @torch.no_grad()
    def durations(self, text: torch.Tensor, text_lengths: torch.Tensor, codes: torch.Tensor,
                  code_lengths: torch.Tensor) -> torch.Tensor:
        """Frames per text token [B, N] (0 on pads): `hard_durations` of this model's soft alignment."""
        return hard_durations(self(text, text_lengths, codes, code_lengths).log_probs, text_lengths, code_lengths)


def hard_durations(log_probs: torch.Tensor, text_lengths: torch.Tensor, code_lengths: torch.Tensor) -> torch.Tensor:
    """log_probs [B, T, N] (an `AlignerOutput`'s) -> frames per text token [B, N] (0 on pads), by
    monotonic alignment search: each real token gets >= 1 frame and each item's durations sum to
    its code_lengths. Needs T_b >= N_b."""
    short = (code_lengths < text_lengths).nonzero()[:, 0]
    if short.numel():
        b = int(short[0])
        raise ValueError(f"item {b} has {int(code_lengths[b])} frames for {int(text_lengths[b])} text tokens; "
                         "every token needs at least one frame")
    scores = log_probs.detach().float().cpu().numpy()
    out = torch.zeros(log_probs.shape[0], log_probs.shape[2], dtype=torch.long)
    for b in range(log_probs.shape[0]):
        N_b, T_b = int(text_lengths[b]), int(code_lengths[b])
        out[b, :N_b] = torch.from_numpy(monotonic_alignment_search(scores[b, :T_b, :N_b]))
    return out.to(log_probs.device)


def forward_sum_loss(log_probs: torch.Tensor, text_lengths: torch.Tensor, code_lengths: torch.Tensor) -> torch.Tensor:
    """-log P(text | frames) under a CTC whose targets are the tokens 1..N_b in order, per frame.

    log_probs [B, T, N]: each frame's log alignment onto the tokens. A blank column of constant
    score joins before a second softmax, as in RAD-TTS; the blank is never a target.
    """
    B, T, N = log_probs.shape
    with_blank = F.pad(log_probs, (1, 0), value=BLANK_LOGPROB).log_softmax(-1)  # [B, T, N + 1]
    targets = torch.arange(1, N + 1, device=log_probs.device).expand(B, N)
    loss = F.ctc_loss(with_blank.transpose(0, 1), targets, code_lengths, text_lengths, blank=0,
                      reduction="none", zero_infinity=True)  # [B]
    return (loss / code_lengths.clamp(min=1)).mean()


def monotonic_alignment_search(log_probs: np.ndarray) -> np.ndarray:
    """log_probs [T, N] -> durations [N] (ints >= 1, summing to T) of the best monotonic path.

    The path starts on token 0 at frame 0, ends on token N - 1 at frame T - 1, and at each frame
    stays on its token or moves to the next (Glow-TTS's MAS), maximizing the summed log-probs.
    """
    T, N = log_probs.shape
    if T < N:
        raise ValueError(f"{T} frames cannot cover {N} tokens with at least one frame each")
    best = np.full((T, N), -np.inf)
    came_from_previous = np.zeros((T, N), dtype=bool)
    best[0, 0] = log_probs[0, 0]
    for t in range(1, T):
        stay = best[t - 1]
        move = np.concatenate([[-np.inf], best[t - 1, :-1]])
        came_from_previous[t] = move > stay
        best[t] = np.maximum(stay, move) + log_probs[t]
    durations = np.zeros(N, dtype=np.int64)
    n = N - 1
    for t in range(T - 1, -1, -1):
        durations[n] += 1
        if t > 0 and came_from_previous[t, n]:
            n -= 1
    if n != 0 or math.isinf(best[T - 1, N - 1]):
        raise RuntimeError("monotonic alignment search found no complete path")
    return durations

