"""The autoregressive model: codebook 1 of the target, frame by frame, from text and a prompt.

One sequence per item, in blocks (lm/layout.py):

    [text (N)] [prompt codebook 1 (P)] [BOS, target codebook 1 (T + 1)]

Text attends to the real text; audio attends to the real text and, causally, to the real
audio (prompt, then BOS and the target). Position t of the target block predicts target
token t, and position T_b predicts EOS; only these positions carry the loss.

    out = model(text, text_lengths, prompt, prompt_lengths, codes, code_lengths)  # training
    logits, cache = model.prefill(text, text_lengths, prompt, prompt_lengths)     # inference:
    logits, cache = model.step(tokens, cache)                                    # one frame per call

The cache (`ARCache`) holds, per layer, the keys and values of every position run so far:
the prefilled [text] [prompt] [BOS] blocks (their pads stay in it, masked by `cache.valid`), then
one position per `step`; `next_position` [B] is each item's audio position for the next token.
`step` updates it in place; `cache.select(index)` keeps some items (e.g. drops finished ones).

Audio ids: codes 0..C-1, then EOS = C, BOS = C + 1, PAD = C + 2 (config properties). The output
layer scores C + 1 classes (the codes and EOS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lm.layout import Layout, check_batch, frame_mask
from lm.losses import IGNORE, LMOutput, token_loss
from lm.pretrained import LMConfig, PretrainedLM
from lm.transformer import KVCache, SegmentPositions, Transformer


@dataclass
class ARConfig(LMConfig):
    model_type: ClassVar[str] = "echo_ar"

    @property
    def eos_id(self) -> int:
        """Predicted after the last frame; also a valid input to `step`."""
        return self.codebook_size

    @property
    def bos_id(self) -> int:
        return self.codebook_size + 1

    @property
    def pad_id(self) -> int:
        return self.codebook_size + 2

    @property
    def n_input_tokens(self) -> int:
        return self.codebook_size + 3

    @property
    def n_output_tokens(self) -> int:
        return self.codebook_size + 1


class AROutput(LMOutput):
    """logits [B, T + 1, C + 1]; loss, top1, top10 over the target frames and EOS."""


@dataclass
class ARCache(KVCache):
    """The KV cache of one generation, and the audio position of the next token per item."""

    next_position: torch.Tensor  # [B] long

    def select(self, index: torch.Tensor) -> None:
        super().select(index)
        self.next_position = self.next_position[index]


class ARModel(PretrainedLM):
    config_class = ARConfig

    def __init__(self, config: ARConfig):
        super().__init__(config)
        D = config.d_model
        self.text_embedding = nn.Embedding(config.text_vocab_size, D)
        self.audio_embedding = nn.Embedding(config.n_input_tokens, D)
        self.text_positions = SegmentPositions(D)
        self.audio_positions = SegmentPositions(D)
        self.dropout = nn.Dropout(config.dropout)
        self.transformer = Transformer(D, config.n_heads, config.n_layers, config.ffn_dim, config.dropout, config.ffn)
        self.head = nn.Linear(D, config.n_output_tokens, bias=False)
        for embedding in (self.text_embedding, self.audio_embedding):
            nn.init.normal_(embedding.weight, std=D**-0.5)  # scaled by sqrt(D) on input: unit variance

    # -- the shared path ------------------------------------------------------------------------

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, positions: SegmentPositions,
               position_ids: torch.Tensor) -> torch.Tensor:
        return table(ids) * math.sqrt(self.config.d_model) + positions(position_ids)  # [B, L, D]

    def _encode(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, target: torch.Tensor, target_lengths: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """text [B, N], prompt [B, P] (codebook 1), target [B, T'] (BOS + codes) -> hidden [B, N + P + T', D]."""
        (B, N), P, T = text.shape, prompt.shape[1], target.shape[1]
        layout = Layout.build(text_lengths, N, [(prompt_lengths, P), (target_lengths, T)])
        text = text.masked_fill(~layout.valid[:, :N], self.config.text_pad_id)
        audio = torch.cat([prompt, target], 1).masked_fill(~layout.valid[:, N:], self.config.pad_id)  # [B, P + T']
        x = torch.cat([
            self._embed(self.text_embedding, text, self.text_positions, layout.positions[:, :N]),
            self._embed(self.audio_embedding, audio, self.audio_positions, layout.positions[:, N:]),
        ], 1)  # [B, L, D]
        if cache is not None:
            cache.valid = torch.cat([cache.valid, layout.valid], 1)
        return self.transformer(self.dropout(x), layout.attention_mask(causal_audio=True), cache=cache)

    def _check(self, text, text_lengths, prompt, prompt_lengths, codes=None, code_lengths=None) -> None:
        check_batch(text_vocab_size=self.config.text_vocab_size, codebook_size=self.config.codebook_size,
                    text=text, text_lengths=text_lengths, prompt=prompt, prompt_lengths=prompt_lengths,
                    prompt_codebooks=1, codes=codes, code_lengths=code_lengths, code_codebooks=1)

    def _bos(self, B: int, device: torch.device) -> torch.Tensor:
        return torch.full((B, 1), self.config.bos_id, dtype=torch.long, device=device)

    # -- training -----------------------------------------------------------------------------

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor) -> AROutput:
        """text [B, N], prompt [B, K, P], codes [B, K, T] (K >= 1; codebook 1 is read) -> AROutput."""
        self._check(text, text_lengths, prompt, prompt_lengths, codes, code_lengths)
        (B, N), P, T = text.shape, prompt.shape[2], codes.shape[2]
        target1 = codes[:, 0].long()  # [B, T]
        inputs = torch.cat([self._bos(B, codes.device), target1], 1)  # [B, T + 1]
        h = self._encode(text.long(), text_lengths, _codebook1(prompt), prompt_lengths, inputs, code_lengths + 1)
        logits = self.head(h[:, N + P:])  # [B, T + 1, C + 1]
        real = frame_mask(code_lengths, T)  # [B, T]
        labels = torch.full((B, T + 1), IGNORE, dtype=torch.long, device=codes.device)
        labels[:, :T] = target1.masked_fill(~real, IGNORE)
        labels[torch.arange(B, device=codes.device), code_lengths] = self.config.eos_id
        return AROutput(**vars(token_loss(logits, labels)))

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, max_new_tokens: int = 0) -> tuple[torch.Tensor, ARCache]:
        """Run [text] [prompt] [BOS] once; return the logits of the first target token [B, C + 1]
        and the cache that `step` continues from. `max_new_tokens` reserves cache room up front.

        Call `model.eval()` first: with dropout on, the cache would not match `forward`.
        """
        self._check(text, text_lengths, prompt, prompt_lengths)
        B = text.shape[0]
        cache = ARCache.empty(self.config.n_layers, B, text.device, reserve=max_new_tokens,
                              next_position=prompt_lengths.long() + 1)  # BOS sits at position P_b
        h = self._encode(text.long(), text_lengths, _codebook1(prompt), prompt_lengths, self._bos(B, text.device),
                         torch.ones_like(prompt_lengths), cache)
        return self.head(h[:, -1]), cache  # [B, C + 1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: ARCache) -> tuple[torch.Tensor, ARCache]:
        """Feed one token per item (a code, or EOS for items already finished): tokens [B] ->
        logits of the next token [B, C + 1]. The cache is updated in place and returned."""
        if tokens.dim() != 1 or tokens.shape[0] != cache.batch_size:
            raise ValueError(f"tokens must have shape [B] = [{cache.batch_size}], got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > self.config.eos_id):
            raise ValueError(f"tokens must lie in [0, {self.config.eos_id}] (codes or EOS), "
                             f"got [{int(tokens.min())}, {int(tokens.max())}]")
        x = self._embed(self.audio_embedding, tokens.long()[:, None], self.audio_positions,
                        cache.next_position[:, None])  # [B, 1, D]
        cache.valid = torch.cat([cache.valid, cache.valid.new_ones(cache.batch_size, 1)], 1)  # [B, S]
        h = self.transformer(x, cache.valid[:, None, None, :], cache=cache)  # [B, 1, D]
        cache.next_position = cache.next_position + 1
        return self.head(h[:, 0]), cache


def _codebook1(prompt: torch.Tensor) -> torch.Tensor:
    """prompt [B, K, P] -> codebook 1 [B, P] (an empty prompt may come with K = 0)."""
    B, K, P = prompt.shape
    return prompt[:, 0].long() if K else prompt.new_zeros(B, P, dtype=torch.long)
