"""How a batch becomes one padded sequence per item, and who may attend to whom.

The batch contract (data/lm_data.py makes it):

    text [B, N]      phoneme ids, padded; text_lengths [B]  (each text is <lang><bos> ... <eos>)
    prompt [B, K, P] prompt codes, padded (P may be 0); prompt_lengths [B]
    codes [B, K, T]  target codes, padded; code_lengths [B]

Padded values are never read: they are replaced by a valid id before embedding, so the data
may pad with anything. Each item's sequence is laid out in blocks of fixed width,

    [text (N)] [audio block 1 (e.g. the prompt, P)] [audio block 2 (e.g. the target, T)] ...

with its own padding at the end of every block. Text positions count from 0; audio positions
count from 0 over the real frames of the audio blocks in order, skipping the pads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def _check_lengths(name: str, lengths: torch.Tensor, B: int, width: int, minimum: int) -> None:
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"{name} must have shape [B] = [{B}], got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got {lengths.dtype}")
    if B and (lengths.min() < minimum or lengths.max() > width):
        raise ValueError(f"{name} must lie in [{minimum}, {width}] (the padded width), got {lengths.tolist()}")


def _check_ids(name: str, ids: torch.Tensor, dims: int, shape: str) -> None:
    if ids.dim() != dims:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be integer ids, got {ids.dtype}")


def frame_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """lengths [B] -> [B, width] bool, True on the first lengths[b] positions."""
    return torch.arange(width, device=lengths.device) < lengths[:, None]


def _check_range(name: str, ids: torch.Tensor, valid: torch.Tensor, high: int) -> None:
    """ids within [0, high) wherever valid (broadcast to ids' shape) is True."""
    real = ids[valid.expand_as(ids)]
    if real.numel() and (real.min() < 0 or real.max() >= high):
        raise ValueError(f"{name} must lie in [0, {high}) on real (unpadded) positions, "
                         f"got values in [{int(real.min())}, {int(real.max())}]")


def check_batch(
    *,
    text_vocab_size: int,
    codebook_size: int,
    text: torch.Tensor,
    text_lengths: torch.Tensor,
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    prompt_codebooks: int,
    codes: torch.Tensor | None = None,
    code_lengths: torch.Tensor | None = None,
    code_codebooks: int = 1,
    min_code_length: int = 1,
) -> None:
    """Raise ValueError naming the argument when the batch breaks the contract.

    prompt_codebooks / code_codebooks: how many codebooks the model reads from each (a prompt
    with P = 0 may have any K).
    """
    _check_ids("text", text, 2, "[B, N]")
    _check_ids("prompt", prompt, 3, "[B, K, P]")
    sizes = {"text": text.shape[0], "text_lengths": text_lengths.shape[0] if text_lengths.dim() else None,
             "prompt": prompt.shape[0], "prompt_lengths": prompt_lengths.shape[0] if prompt_lengths.dim() else None}
    if codes is not None:
        if code_lengths is None:
            raise ValueError("codes were given without code_lengths")
        _check_ids("codes", codes, 3, "[B, K, T]")
        sizes.update(codes=codes.shape[0], code_lengths=code_lengths.shape[0] if code_lengths.dim() else None)
    if len(set(sizes.values())) != 1:
        raise ValueError("batch sizes differ: " + ", ".join(f"{k} has {v}" for k, v in sizes.items()))
    B = text.shape[0]
    _check_lengths("text_lengths", text_lengths, B, text.shape[1], 1)
    _check_lengths("prompt_lengths", prompt_lengths, B, prompt.shape[2], 0)
    _check_range("text", text, frame_mask(text_lengths, text.shape[1]), text_vocab_size)
    if prompt.shape[2] and prompt.shape[1] < prompt_codebooks:
        raise ValueError(f"prompt has {prompt.shape[1]} codebooks; this model reads {prompt_codebooks}")
    _check_range("prompt codes", prompt[:, :prompt_codebooks], frame_mask(prompt_lengths, prompt.shape[2])[:, None],
                 codebook_size)
    if codes is not None:
        _check_lengths("code_lengths", code_lengths, B, codes.shape[2], min_code_length)
        if codes.shape[1] < code_codebooks:
            raise ValueError(f"codes has {codes.shape[1]} codebooks; this needs at least {code_codebooks}")
        _check_range("codes", codes[:, :code_codebooks], frame_mask(code_lengths, codes.shape[2])[:, None],
                     codebook_size)


@dataclass
class Layout:
    valid: torch.Tensor  # [B, L] bool: real positions
    is_text: torch.Tensor  # [B, L] bool
    positions: torch.Tensor  # [B, L] long: per segment, text from 0, audio from 0

    @classmethod
    def build(cls, text_lengths: torch.Tensor, N: int, audio_blocks: Sequence[tuple[torch.Tensor, int]]) -> "Layout":
        """text_lengths [B] in a block of width N, then audio blocks given as (lengths [B], width)."""
        B, device = text_lengths.shape[0], text_lengths.device
        valid, positions = [frame_mask(text_lengths, N)], [torch.arange(N, device=device).expand(B, N)]
        offset = torch.zeros(B, dtype=torch.long, device=device)  # audio frames before this block
        for lengths, width in audio_blocks:
            valid.append(frame_mask(lengths, width))
            positions.append(offset[:, None] + torch.arange(width, device=device))
            offset = offset + lengths
        is_text = torch.zeros(B, N + sum(w for _, w in audio_blocks), dtype=torch.bool, device=device)
        is_text[:, :N] = True
        return cls(torch.cat(valid, 1), is_text, torch.cat(positions, 1))

    def attention_mask(self, causal_audio: bool) -> torch.Tensor:
        """[B, 1, L, L] bool, True where query (row) may attend to key (column).

        causal_audio=False (NAR): every real position sees every real position.
        causal_audio=True (AR): text sees all real text and no audio; audio sees all real text
        and the real audio at or before its own position.
        Every position also sees itself, so that pad rows have a key (their output is unused).
        """
        B, L = self.valid.shape
        allowed = self.valid[:, None, :].expand(B, L, L)  # [B, L (query), L (key)]
        if causal_audio:
            text_key, text_query = self.is_text[:, None, :], self.is_text[:, :, None]
            earlier = self.positions[:, None, :] <= self.positions[:, :, None]
            allowed = allowed & torch.where(text_query, text_key, text_key | earlier)
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=self.valid.device)
        return allowed[:, None]  # [B, 1, L, L]
