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

Duration-guided (`duration_guided=True`, ELLA-V's local phoneme advance as an input and a
head instead of interleaved tokens): each target position also reads the text token its frame
speaks (`alignment` [B, T], from Echo's aligner, lm/aligner.py), and a second head predicts
whether the next frame moves on to the next token. At inference the generation loop keeps that
pointer (`ARCache.text_index`), advances it by the head's decision and ends the utterance when
it moves past the last token, so the model can neither skip nor repeat the text.

With `text_window=w` as well (RALL-E's duration-guided masking, Xin et al. 2024), each target
position attends only to the text tokens within w of the one it speaks; the prompt and the text
still see the whole text. The mask follows the same pointer at inference, so training and
generation see the same window.

With `text_dropout=p`, training hides the phonemes of a share p of the items: every text id
becomes `text_pad_id` while the text keeps its length, positions and (duration-guided) timing,
so the model also learns what a frame sounds like from the voice and the timing alone.
`hide_text` makes that input; generation with `SamplingConfig.cfg_scale` > 1 runs it beside the
real text and extrapolates away from it (classifier-free guidance, as in NeMo's Koel-TTS /
Magpie-TTS).
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
from lm.transformer import KVCache, SegmentPositions, Transformer


@dataclass
class ARConfig(LMConfig):
    model_type: ClassVar[str] = "echo_ar"
    duration_guided: bool = False  # read the aligned text token at each frame; predict when to advance
    text_window: int | None = None  # duration-guided: target frames see only the text tokens within this many
    text_dropout: float = 0.0  # share of training items whose phonemes are hidden (classifier-free guidance)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"text_dropout is a probability in [0, 1), got {self.text_dropout}")
        if self.text_window is not None:
            if not self.duration_guided:
                raise ValueError("text_window needs duration_guided=True: the window follows the aligned text token")
            if not isinstance(self.text_window, int) or isinstance(self.text_window, bool) or self.text_window < 0:
                raise ValueError(f"text_window must be a non-negative integer (or None: the whole text), "
                                 f"got {self.text_window!r}")

    @property
    def guidable(self) -> bool:
        """Trained with its text hidden at times, so synthesis can guide it by its text."""
        return self.text_dropout > 0

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


@dataclass
class AROutput(LMOutput):
    """logits [B, T + 1, C + 1]; loss, top1, top10 over the target frames and EOS.

    Duration-guided models add `advance_loss` (binary cross-entropy of "the next frame speaks the
    next token", already inside `loss`) and `advance_accuracy`.
    """

    advance_loss: torch.Tensor | None = None
    advance_accuracy: torch.Tensor | None = None


@dataclass
class ARCache(KVCache):
    """The KV cache of one generation, and the audio position of the next token per item."""

    next_position: torch.Tensor  # [B] long
    text_index: torch.Tensor | None = None  # [B] long, duration-guided: the text token the next frame speaks
    advance_logits: torch.Tensor | None = None  # [B], duration-guided: the last position's "move on" logit
    text: torch.Tensor | None = None  # [B, N], duration-guided: the text the frames read from (pads valid ids)
    text_lengths: torch.Tensor | None = None  # [B]

    def select(self, index: torch.Tensor) -> None:
        super().select(index)
        self.next_position = self.next_position[index]
        if self.text_index is not None:
            self.text_index, self.advance_logits = self.text_index[index], self.advance_logits[index]
            self.text, self.text_lengths = self.text[index], self.text_lengths[index]


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
        self.transformer = Transformer(D, config.n_heads, config.n_layers, config.ffn_dim, config.dropout, config.ffn,
                                       attention_dropout=config.attention_dropout)
        self.head = nn.Linear(D, config.n_output_tokens, bias=False)
        if config.duration_guided:
            self.frame_text = nn.Linear(D, D)  # the aligned token's embedding + text position -> the frame's input
            self.advance_head = nn.Linear(D, 1)
        for embedding in (self.text_embedding, self.audio_embedding):
            nn.init.normal_(embedding.weight, std=D**-0.5)  # scaled by sqrt(D) on input: unit variance

    # -- the shared path ------------------------------------------------------------------------

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, positions: SegmentPositions,
               position_ids: torch.Tensor) -> torch.Tensor:
        return table(ids) * math.sqrt(self.config.d_model) + positions(position_ids)  # [B, L, D]

    def _frame_text(self, text: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """text [B, N] (pads already valid ids), text_index [B, T'] -> what each frame reads of it [B, T', D]."""
        ids = text.gather(1, text_index)  # [B, T']
        return self.frame_text(self._embed(self.text_embedding, ids, self.text_positions, text_index))

    def _inputs(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, target: torch.Tensor, target_lengths: torch.Tensor,
                text_index: torch.Tensor | None = None) -> tuple[torch.Tensor, Layout, torch.Tensor]:
        """text [B, N], prompt [B, P] (codebook 1), target [B, T'] (BOS + codes) -> embeddings
        [B, N + P + T', D], their layout and the attention mask [B, 1, L, L].

        text_index [B, T'] (duration-guided): the text token each target position speaks. With
        `text_window`, the target rows of the mask keep only the text keys within the window of it."""
        N, P, T = text.shape[1], prompt.shape[1], target.shape[1]
        layout = Layout.build(text_lengths, N, [(prompt_lengths, P), (target_lengths, T)])
        mask = layout.attention_mask(causal_audio=True)
        text = text.masked_fill(~layout.valid[:, :N], self.config.text_pad_id)
        audio = torch.cat([prompt, target], 1).masked_fill(~layout.valid[:, N:], self.config.pad_id)  # [B, P + T']
        audio = self._embed(self.audio_embedding, audio, self.audio_positions, layout.positions[:, N:])  # [B, P + T', D]
        if self.config.duration_guided:
            # the EOS position ("past the end") reads the last token, as the pointer does at inference
            index = torch.minimum(text_index, (text_lengths - 1)[:, None])
            audio = torch.cat([audio[:, :P], audio[:, P:] + self._frame_text(text, index)], 1)
            if self.config.text_window is not None:
                mask[:, 0, -T:, :N] &= _text_window(index, N, self.config.text_window)
        x = torch.cat([self._embed(self.text_embedding, text, self.text_positions, layout.positions[:, :N]), audio], 1)
        return x, layout, mask

    def _encode(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, target: torch.Tensor, target_lengths: torch.Tensor,
                cache: KVCache | None = None, text_index: torch.Tensor | None = None,
                keep: slice | None = None) -> torch.Tensor:
        """The same inputs as `_inputs` -> hidden [B, N + P + T', D], or of the `keep` positions only."""
        x, layout, mask = self._inputs(text, text_lengths, prompt, prompt_lengths, target, target_lengths, text_index)
        if cache is not None:
            cache.valid = torch.cat([cache.valid, layout.valid], 1)
        return self.transformer(self.dropout(x), mask, cache=cache, keep=keep)

    def _check(self, text, text_lengths, prompt, prompt_lengths, codes=None, code_lengths=None) -> None:
        check_batch(text_vocab_size=self.config.text_vocab_size, codebook_size=self.config.codebook_size,
                    text=text, text_lengths=text_lengths, prompt=prompt, prompt_lengths=prompt_lengths,
                    prompt_codebooks=1, codes=codes, code_lengths=code_lengths, code_codebooks=1)

    def _bos(self, B: int, device: torch.device) -> torch.Tensor:
        return torch.full((B, 1), self.config.bos_id, dtype=torch.long, device=device)

    # -- training -----------------------------------------------------------------------------

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor,
                alignment: torch.Tensor | None = None) -> AROutput:
        """text [B, N], prompt [B, K, P], codes [B, K, T] (K >= 1; codebook 1 is read) -> AROutput.

        alignment [B, T] (duration-guided models only): the text index each target frame speaks."""
        self._check(text, text_lengths, prompt, prompt_lengths, codes, code_lengths)
        (B, N), P, T = text.shape, prompt.shape[2], codes.shape[2]
        if self.training and self.config.text_dropout > 0:
            hidden = torch.rand(B, device=text.device) < self.config.text_dropout
            text = torch.where(hidden[:, None], self.hide_text(text), text)
        real = frame_mask(code_lengths, T)  # [B, T]
        text_index = self._target_text_index(alignment, text_lengths, code_lengths, T)
        target1 = codes[:, 0].long()  # [B, T]
        inputs = torch.cat([self._bos(B, codes.device), target1], 1)  # [B, T + 1]
        h = self._encode(text.long(), text_lengths, _codebook1(prompt), prompt_lengths, inputs, code_lengths + 1,
                         text_index=text_index, keep=slice(N + P, None))  # [B, T + 1, D]: the target block
        logits = self.head(h)  # [B, T + 1, C + 1]
        labels = torch.full((B, T + 1), IGNORE, dtype=torch.long, device=codes.device)
        labels[:, :T] = target1.masked_fill(~real, IGNORE)
        labels[torch.arange(B, device=codes.device), code_lengths] = self.config.eos_id
        out = token_loss(logits, labels)
        if not self.config.duration_guided:
            return AROutput(**vars(out))
        # position t (frame t) predicts whether frame t + 1 speaks the next token (or the end, after the last frame)
        advance_logits = self.advance_head(h[:, :T])[..., 0].float()  # [B, T]
        advance = (text_index[:, 1:] > text_index[:, :-1]).float()  # [B, T]
        advance_loss = F.binary_cross_entropy_with_logits(advance_logits[real], advance[real])
        accuracy = ((advance_logits[real] > 0).float() == advance[real]).float().mean()
        return AROutput(**{**vars(out), "loss": out.loss + advance_loss}, advance_loss=advance_loss,
                        advance_accuracy=accuracy)

    def hide_text(self, text: torch.Tensor) -> torch.Tensor:
        """text [B, N] -> the same shape with every id `text_pad_id`: the phonemes hidden, the length kept."""
        return torch.full_like(text, self.config.text_pad_id)

    def _target_text_index(self, alignment: torch.Tensor | None, text_lengths: torch.Tensor,
                           code_lengths: torch.Tensor, T: int) -> torch.Tensor | None:
        """Duration-guided: alignment [B, T] -> the text index of each target position [B, T + 1]; the
        position after the last frame (and every pad) reads "past the end", N_b."""
        if not self.config.duration_guided:
            return None
        B = code_lengths.shape[0]
        if alignment is None or alignment.shape != (B, T):
            raise ValueError(f"this duration-guided AR needs alignment [B, T] = [{B}, {T}] (the text index of "
                             "every target frame): align the corpus with recipes/align.py")
        real = frame_mask(code_lengths, T + 1)  # [B, T + 1]
        index = torch.cat([alignment.long(), alignment.new_zeros(B, 1, dtype=torch.long)], 1)
        return torch.where(real, index, text_lengths[:, None].long())

    @torch.no_grad()
    def text_attention(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                       prompt_lengths: torch.Tensor, codes: torch.Tensor, code_lengths: torch.Tensor,
                       alignment: torch.Tensor | None = None) -> torch.Tensor:
        """How the target frames attend to the text, per layer: [n_layers, B, T, N], averaged over
        heads and renormalized over the real text keys (each frame's row sums to 1).

        Row t is the position that writes frame t. Pads (beyond T_b or N_b) are 0."""
        (B, N), P, T = text.shape, prompt.shape[2], codes.shape[2]
        inputs = torch.cat([self._bos(B, codes.device), codes[:, 0].long()], 1)
        text_index = self._target_text_index(alignment, text_lengths, code_lengths, T)
        x, _, mask = self._inputs(text.long(), text_lengths, _codebook1(prompt), prompt_lengths, inputs,
                                  code_lengths + 1, text_index)
        maps = self.transformer.attention_maps(x, mask)
        onto_text = torch.stack([m[:, :, N + P : N + P + T, :N].mean(1) for m in maps])  # [layers, B, T, N]
        onto_text = onto_text * frame_mask(text_lengths, N)[None, :, None, :]
        onto_text = onto_text / onto_text.sum(-1, keepdim=True).clamp(min=1e-9)
        return onto_text * frame_mask(code_lengths, T)[None, :, :, None]

    # -- inference ----------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                prompt_lengths: torch.Tensor, max_new_tokens: int = 0,
                start_index: torch.Tensor | None = None) -> tuple[torch.Tensor, ARCache]:
        """Run [text] [prompt] [BOS] once; return the logits of the first target token [B, C + 1]
        and the cache that `step` continues from. `max_new_tokens` reserves cache room up front.

        start_index [B] (duration-guided): the text token the first frame speaks (0, or the first
        token after the prompt's transcript); the cache keeps the pointer from there.
        Call `model.eval()` first: with dropout on, the cache would not match `forward`.
        """
        self._check(text, text_lengths, prompt, prompt_lengths)
        B = text.shape[0]
        cache = ARCache.empty(self.config.n_layers, B, text.device, reserve=max_new_tokens,
                              next_position=prompt_lengths.long() + 1)  # BOS sits at position P_b
        if self.config.duration_guided:
            start = torch.zeros(B, dtype=torch.long, device=text.device) if start_index is None else start_index.long()
            if B and ((start < 0) | (start >= text_lengths)).any():
                raise ValueError(f"start_index must lie in [0, text_lengths), got {start.tolist()}")
            cache.text_index, cache.text_lengths = start, text_lengths
            cache.text = text.long().masked_fill(~frame_mask(text_lengths, text.shape[1]), self.config.text_pad_id)
        h = self._encode(text.long(), text_lengths, _codebook1(prompt), prompt_lengths, self._bos(B, text.device),
                         torch.ones_like(prompt_lengths), cache,
                         text_index=cache.text_index[:, None] if self.config.duration_guided else None,
                         keep=slice(-1, None))  # [B, 1, D]: BOS, which writes the first frame
        self._note_advance(cache, h[:, -1])
        return self.head(h[:, -1]), cache  # [B, C + 1]

    def _note_advance(self, cache: ARCache, h: torch.Tensor) -> None:
        """Duration-guided: keep the "move on" logit of the last position, h [B, D], for the caller."""
        if self.config.duration_guided:
            cache.advance_logits = self.advance_head(h)[:, 0].float()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: ARCache, advance: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, ARCache]:
        """Feed one token per item (a code, or EOS for items already finished): tokens [B] ->
        logits of the next token [B, C + 1]. The cache is updated in place and returned.

        advance [B] bool (duration-guided): whether this frame speaks the next text token
        (sample it from `cache.advance_logits`); the pointer stays on the last token."""
        if tokens.dim() != 1 or tokens.shape[0] != cache.batch_size:
            raise ValueError(f"tokens must have shape [B] = [{cache.batch_size}], got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > self.config.eos_id):
            raise ValueError(f"tokens must lie in [0, {self.config.eos_id}] (codes or EOS), "
                             f"got [{int(tokens.min())}, {int(tokens.max())}]")
        x = self._embed(self.audio_embedding, tokens.long()[:, None], self.audio_positions,
                        cache.next_position[:, None])  # [B, 1, D]
        if self.config.duration_guided:
            if advance is not None:
                cache.text_index = torch.minimum(cache.text_index + advance.long(), cache.text_lengths - 1)
            x = x + self._frame_text(cache.text, cache.text_index[:, None])
        cache.valid = torch.cat([cache.valid, cache.valid.new_ones(cache.batch_size, 1)], 1)  # [B, S]
        mask = cache.valid[:, None, None, :]  # [B, 1, 1, S]; the first N cached positions are the text
        if self.config.text_window is not None:
            N = cache.text.shape[1]
            mask = mask.clone()
            mask[:, 0, :, :N] &= _text_window(cache.text_index[:, None], N, self.config.text_window)
        h = self.transformer(x, mask, cache=cache)  # [B, 1, D]
        cache.next_position = cache.next_position + 1
        self._note_advance(cache, h[:, 0])
        return self.head(h[:, 0]), cache


def _text_window(text_index: torch.Tensor, N: int, window: int) -> torch.Tensor:
    """text_index [B, T] -> [B, T, N] bool: True on the text keys within `window` of each row's token."""
    keys = torch.arange(N, device=text_index.device)
    return (keys - text_index[..., None]).abs() <= window


def _codebook1(prompt: torch.Tensor) -> torch.Tensor:
    """prompt [B, K, P] -> codebook 1 [B, P] (an empty prompt may come with K = 0)."""
    B, K, P = prompt.shape
    return prompt[:, 0].long() if K else prompt.new_zeros(B, P, dtype=torch.long)
