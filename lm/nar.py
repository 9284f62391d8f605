"""The non-autoregressive model: codebook j of every target frame at once, for j in 2..K.

One sequence per item, in blocks (lm/layout.py):

    [text (N)] [prompt frames (P)] [target frames (T)]

A prompt frame is the sum of the embeddings of all K prompt codes; a target frame the sum of
the embeddings of target codebooks 1..j-1. Attention is bidirectional over the real positions,
and every layer norm is adaptive, conditioned on the stage j. The output for codebook j is
read on the target frames only; prompt frames and pads carry no loss.

    out = model(text, text_lengths, prompt, prompt_lengths, codes, code_lengths, stage)  # training
    logits = model.predict(text, text_lengths, prompt, prompt_lengths, codes[:, :j - 1], code_lengths, j)

`stage` is an int (the same j for the whole batch) or a LongTensor [B] (one j per item, as the
training recipe samples it).

A codec with a pitch stream (`CodecConfig.pitch_bins`) puts F0 in row 2 of the codes, so the NAR's
first stage predicts the pitch. It predicts it relative to the prompt's register: inside the model,
every voiced pitch code (prompt, target input and label) is shifted so that the median voiced code
of the item's prompt sits in the middle of the code range, and the logits are shifted back. The
register is then copied from the prompt exactly and the network only learns the contour. Its
logits are in the codec's own pitch codes in and out, with the codes the shift or the pitch range
cannot reach masked out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lm.layout import Layout, check_batch, frame_mask
from lm.losses import IGNORE, LMOutput, token_loss
from lm.pretrained import LMConfig, PretrainedLM
from lm.transformer import SegmentPositions, Transformer


@dataclass
class NARConfig(LMConfig):
    tie_output_embeddings: bool = False  # score codebook j with codebook j's embedding table

    model_type: ClassVar[str] = "echo_nar"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_q < 2:
            raise ValueError(f"n_q must be at least 2 for the NAR model (it predicts codebooks 2..n_q), got {self.n_q}")
        if not isinstance(self.tie_output_embeddings, bool):
            raise ValueError(f"tie_output_embeddings must be true or false, got {self.tie_output_embeddings!r}")

    @property
    def stages(self) -> range:
        """The codebooks the NAR predicts, 1-based: 2..n_q."""
        return range(2, self.n_q + 1)


PITCH_ROW = 1  # the pitch stream's row (0-based) in the codes of a codec with one (codec/model.py)


def pitch_register(pitch: torch.Tensor, valid: torch.Tensor, bins: int) -> torch.Tensor:
    """Pitch codes [B, P] and their validity [B, P] -> the (lower) median voiced code per item [B];
    the middle code bins // 2 for an item with no voiced frame."""
    voiced = valid & (pitch > 0)
    count = voiced.sum(1)
    ordered = torch.where(voiced, pitch.long(), bins).sort(1).values  # voiced codes first, ascending
    median = ordered.gather(1, ((count - 1).clamp(min=0) // 2)[:, None])[:, 0] if pitch.shape[1] else count
    return torch.where(count > 0, median, bins // 2)


def to_register(pitch: torch.Tensor, register: torch.Tensor, bins: int) -> torch.Tensor:
    """Absolute pitch codes [B, T] -> codes relative to `register` [B], which maps to bins // 2;
    0 (unvoiced) stays 0 and voiced codes stay within 1..bins-1 (clamped)."""
    shifted = (pitch.long() - register[:, None] + bins // 2).clamp(1, bins - 1)
    return torch.where(pitch > 0, shifted, 0)


def from_register(logits: torch.Tensor, register: torch.Tensor, bins: int) -> torch.Tensor:
    """Logits over relative pitch codes [B, T, C] -> logits over absolute codes [B, T, C]; codes the
    shift cannot reach, and codes >= bins, get the lowest logit (probability 0)."""
    B, T, C = logits.shape
    code = torch.arange(C, device=logits.device)
    relative = code - register[:, None] + bins // 2  # [B, C]: the relative code of each absolute one
    reachable = (code >= 1) & (code < bins) & (relative >= 1) & (relative < bins)
    relative = torch.where(code == 0, 0, relative.clamp(0, C - 1))
    absolute = logits.gather(2, relative[:, None].expand(B, T, C))
    return absolute.masked_fill(~(reachable | (code == 0))[:, None], torch.finfo(logits.dtype).min)


class NAROutput(LMOutput):
    """logits [B, T, C] for each item's codebook j; loss, top1, top10 over the real target frames."""


class NARModel(PretrainedLM):
    config_class = NARConfig

    def __init__(self, config: NARConfig):
        super().__init__(config)
        D, K, C = config.d_model, config.n_q, config.codebook_size
        self.text_embedding = nn.Embedding(config.text_vocab_size, D)
        self.audio_embeddings = nn.ModuleList(nn.Embedding(C, D) for _ in range(K))  # one per codebook
        self.stage_embedding = nn.Embedding(K - 1, D)  # stage j at row j - 2
        self.text_positions = SegmentPositions(D)
        self.audio_positions = SegmentPositions(D)
        self.dropout = nn.Dropout(config.dropout)
        self.transformer = Transformer(D, config.n_heads, config.n_layers, config.ffn_dim, config.dropout,
                                       config.ffn, adaptive=True, attention_dropout=config.attention_dropout)
        self.heads = None if config.tie_output_embeddings else nn.ModuleList(
            nn.Linear(D, C, bias=False) for _ in config.stages
        )  # stage j at index j - 2
        for embedding in (self.text_embedding, *self.audio_embeddings):
            nn.init.normal_(embedding.weight, std=D**-0.5)  # scaled by sqrt(D) on input: unit variance
        codec = config.codec_identity
        self.pitch_bins = codec.pitch_bins if codec is not None else 0

    def _stages(self, stage: int | torch.Tensor, B: int, device: torch.device) -> torch.Tensor:
        """stage (int or [B]) -> LongTensor [B], checked to lie in 2..K."""
        K = self.config.n_q
        if isinstance(stage, int) and not isinstance(stage, bool):
            stage = torch.full((B,), stage, dtype=torch.long, device=device)
        elif not isinstance(stage, torch.Tensor) or stage.dtype.is_floating_point or stage.dtype == torch.bool:
            raise ValueError(f"stage must be an int or a LongTensor [B], got {stage!r}")
        if stage.dim() == 0:
            stage = stage.expand(B)
        if stage.shape != (B,):
            raise ValueError(f"stage must be an int or have shape [B] = [{B}], got {tuple(stage.shape)}")
        if B and (stage.min() < 2 or stage.max() > K):
            raise ValueError(f"stage j must lie in 2..{K} (the NAR predicts codebooks 2..n_q), got {stage.tolist()}")
        return stage.long().to(device)

    def _frames(self, codes: torch.Tensor, valid: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        """codes [B, K', W], valid [B, W], used [B, K'] bool -> summed embeddings of the used codebooks [B, W, D]."""
        B, K, W = codes.shape
        x = codes.new_zeros(B, W, self.config.d_model, dtype=self.text_embedding.weight.dtype)
        codes = codes.long().masked_fill(~valid[:, None], 0)  # pads may hold anything
        for k in range(K):
            x = x + self.audio_embeddings[k](codes[:, k]) * used[:, k, None, None]
        return x

    def _register(self, prompt: torch.Tensor, prompt_lengths: torch.Tensor) -> torch.Tensor | None:
        """The median voiced pitch code of each item's prompt [B]; None without a pitch stream."""
        if not self.pitch_bins:
            return None
        if prompt.shape[2] == 0:  # no prompt at all (it may then have no rows either): the middle code
            return torch.full(prompt_lengths.shape, self.pitch_bins // 2, dtype=torch.long, device=prompt.device)
        return pitch_register(prompt[:, PITCH_ROW], frame_mask(prompt_lengths, prompt.shape[2]), self.pitch_bins)

    def _logits(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor,
                stage: torch.Tensor, register: torch.Tensor | None) -> torch.Tensor:
        """stage [B], register [B] (`_register`; None without a pitch stream) -> logits for codebook
        stage[b] on the target frames [B, T, C]."""
        (B, N), P, T, K = text.shape, prompt.shape[2], codes.shape[2], self.config.n_q
        layout = Layout.build(text_lengths, N, [(prompt_lengths, P), (code_lengths, T)])
        text = text.long().masked_fill(~layout.valid[:, :N], self.config.text_pad_id)
        prompt = prompt[:, :K] if P else prompt.new_zeros(B, K, 0)
        if register is not None:
            prompt, codes = prompt.clone(), codes.clone()
            prompt[:, PITCH_ROW] = to_register(prompt[:, PITCH_ROW], register, self.pitch_bins)
            if codes.shape[1] > PITCH_ROW:
                codes[:, PITCH_ROW] = to_register(codes[:, PITCH_ROW], register, self.pitch_bins)
        every = torch.ones(B, K, dtype=torch.bool, device=text.device)
        below_j = torch.arange(stage.max() - 1, device=text.device) < (stage[:, None] - 1)  # [B, j_max - 1]
        audio = torch.cat([
            self._frames(prompt, layout.valid[:, N:N + P], every),  # [B, P, D]: all K codebooks
            self._frames(codes[:, :below_j.shape[1]], layout.valid[:, N + P:], below_j),  # [B, T, D]: 1..j-1
        ], 1)  # [B, P + T, D]
        scale = math.sqrt(self.config.d_model)
        x = torch.cat([
            self.text_embedding(text) * scale + self.text_positions(layout.positions[:, :N]),
            audio * scale + self.audio_positions(layout.positions[:, N:]),
        ], 1)  # [B, L, D]
        h = self.transformer(self.dropout(x), layout.attention_mask(causal_audio=False),
                             cond=self.stage_embedding(stage - 2), keep=slice(N + P, None))  # [B, T, D]
        logits = h.new_empty(B, T, self.config.codebook_size)
        for j in stage.unique().tolist():
            items = stage == j
            weight = self.heads[j - 2].weight if self.heads is not None else self.audio_embeddings[j - 1].weight  # [C, D]
            logits[items] = F.linear(h[items], weight).to(logits.dtype)  # autocast computes it in half
            if register is not None and j - 1 == PITCH_ROW:
                logits[items] = from_register(logits[items], register[items], self.pitch_bins)
        return logits

    def _check(self, text, text_lengths, prompt, prompt_lengths, codes, code_lengths, codebooks: int) -> None:
        check_batch(text_vocab_size=self.config.text_vocab_size, codebook_size=self.config.codebook_size,
                    text=text, text_lengths=text_lengths, prompt=prompt, prompt_lengths=prompt_lengths,
                    prompt_codebooks=self.config.n_q, codes=codes, code_lengths=code_lengths,
                    code_codebooks=codebooks)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor,
                stage: int | torch.Tensor) -> NAROutput:
        """text [B, N], prompt [B, K, P], codes [B, K', T] with K' >= j -> NAROutput (codebook j)."""
        stage = self._stages(stage, text.shape[0], text.device)
        self._check(text, text_lengths, prompt, prompt_lengths, codes, code_lengths, int(stage.max()) if stage.numel() else 2)
        register = self._register(prompt, prompt_lengths)
        logits = self._logits(text, text_lengths, prompt, prompt_lengths, codes, code_lengths, stage, register)
        B, T = logits.shape[:2]
        labels = codes.long().gather(1, (stage - 1)[:, None, None].expand(B, 1, T))[:, 0]  # [B, T]: codebook j
        if register is not None:  # a pitch label beyond the shift's reach counts as the nearest code it reaches
            clamped = to_register(labels, register, self.pitch_bins) + register[:, None] - self.pitch_bins // 2
            labels = torch.where((stage - 1 == PITCH_ROW)[:, None] & (labels > 0), clamped, labels)
        labels = labels.masked_fill(~frame_mask(code_lengths, T), IGNORE)
        return NAROutput(**vars(token_loss(logits, labels)))

    def predict(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor,
                stage: int | torch.Tensor) -> torch.Tensor:
        """Inference: codes [B, K', T] hold codebooks 1..j-1 (K' >= j - 1; the rest is not read)
        -> logits for codebook j [B, T, C]."""
        stage = self._stages(stage, text.shape[0], text.device)
        self._check(text, text_lengths, prompt, prompt_lengths, codes, code_lengths,
                    int(stage.max()) - 1 if stage.numel() else 1)
        return self._logits(text, text_lengths, prompt, prompt_lengths, codes, code_lengths, stage,
                            self._register(prompt, prompt_lengths))
