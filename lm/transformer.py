"""The transformer both language models are built from.

    Transformer(d_model, n_heads, n_layers, ffn_dim)  # a stack of pre-norm blocks + a final norm
    h = transformer(x, mask)                           # x [B, L, D], mask [B, 1, L, L] -> h [B, L, D]
    h = transformer(x, mask, cond=stage_embedding)     # adaptive layer norm (the NAR's stage j)
    h = transformer(x_new, mask, cache=cache)          # incremental: mask [B, 1, L_new, S_cached + L_new]
    h = transformer(x, mask, keep=slice(N, None))      # only the positions read: h [B, L - N, D]

Masks are boolean, True where a query may attend to a key. Every row must allow at least one
key (softmax over no key is NaN); the models let every position see itself.

The KV cache is for inference only: `LayerCache.append` writes into a preallocated buffer, so
run incremental decoding under `torch.no_grad()` / `torch.inference_mode()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FFN_KINDS = ("gelu", "swiglu")


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions [B, L] (any integers) -> [B, L, dim] sine/cosine features of "Attention is all you need"."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)  # [dim/2]
    angles = positions.float()[..., None] * freqs  # [B, L, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # [B, L, dim]


class SegmentPositions(nn.Module):
    """Sinusoidal positions of one segment (text or audio), scaled by a learned alpha as in VALL-E.

    Each segment counts its own positions from 0, so a text position means the same thing
    whatever the audio around it, and sinusoids need no maximum length.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.alpha = nn.Parameter(torch.ones(()))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.alpha * sinusoids(positions, self.d_model)  # [B, L, D]


# -- KV cache ---------------------------------------------------------------------------------


@dataclass
class LayerCache:
    """Keys and values of one attention layer for every position seen so far.

    Storage is a buffer [B, H, capacity, Dh] that grows (doubling) when full, so appending one
    position costs one write, not a copy of the whole history. `reserve` positions beyond the
    first append are allocated up front (e.g. the most tokens the generation loop will write).
    """

    reserve: int = 0
    keys: torch.Tensor | None = None  # [B, H, capacity, Dh]
    values: torch.Tensor | None = None  # [B, H, capacity, Dh]
    length: int = 0  # positions filled

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v [B, H, L, Dh]; return all keys and values so far, [B, H, length, Dh] each."""
        B, H, L, Dh = k.shape
        end = self.length + L
        if self.keys is None or end > self.keys.shape[2]:
            capacity = max(end + self.reserve, 2 * (self.keys.shape[2] if self.keys is not None else 0))
            keys, values = k.new_empty(B, H, capacity, Dh), v.new_empty(B, H, capacity, Dh)
            if self.keys is not None:
                keys[:, :, : self.length] = self.keys[:, :, : self.length]
                values[:, :, : self.length] = self.values[:, :, : self.length]
            self.keys, self.values = keys, values
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch items `index` (LongTensor [B'] or bool [B]), in that order."""
        if self.keys is not None:
            self.keys, self.values = self.keys[index], self.values[index]


@dataclass
class KVCache:
    """One `LayerCache` per block, and which cached positions are real (pads are never attended)."""

    layers: list[LayerCache]
    valid: torch.Tensor  # [B, S] bool over the S cached positions

    @classmethod
    def empty(cls, n_layers: int, batch_size: int, device: torch.device, reserve: int = 0, **fields):
        """A cache with nothing in it yet; `fields` fill a subclass's own fields."""
        valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        return cls([LayerCache(reserve=reserve) for _ in range(n_layers)], valid, **fields)

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def select(self, index: torch.Tensor) -> None:
        """Keep only the batch items `index`, e.g. to drop finished items during generation."""
        for layer in self.layers:
            layer.select(index)
        self.valid = self.valid[index]


# -- the block ----------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention, with `dropout` on its probabilities while training. On a CPU any such
    dropout sends scaled_dot_product_attention from its fused kernel to the explicit [L, L] path with a
    random mask, 20-30 % of an AR or NAR training step (README, Dropout on the attention probabilities)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: LayerCache | None = None,
                keep: slice | None = None) -> torch.Tensor:
        """x [B, L, D], mask [B, 1, L, S] (S = cached + L) -> [B, L, D]; with `keep`, only those
        queries: [B, L', D] (every position is still a key)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # [B, H, L, Dh] each
        if cache is not None:
            k, v = cache.append(k, v)  # [B, H, S, Dh]
        if keep is not None:
            q, mask = q[:, :, keep], mask[:, :, keep]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, L', Dh]
        return self.out(y.transpose(1, 2).reshape(B, q.shape[2], D))

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention probabilities `forward` uses (before any dropout): x [B, L, D], mask [B, 1, L, L] -> [B, H, L, L]."""
        B, L, D = x.shape
        q, k, _ = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.n_heads)  # [B, H, L, L]
        return scores.masked_fill(~mask, float("-inf")).softmax(-1)


class FeedForward(nn.Module):
    """GELU MLP, or SwiGLU (the gate and value halves share one input projection)."""

    def __init__(self, d_model: int, ffn_dim: int, kind: str = "gelu"):
        super().__init__()
        if kind not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {kind!r}")
        self.kind = kind
        self.up = nn.Linear(d_model, ffn_dim * (2 if kind == "swiglu" else 1))
        self.down = nn.Linear(ffn_dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # [B, L, F] or [B, L, 2F]
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h)
        return self.down(h)  # [B, L, D]


class AdaptiveLayerNorm(nn.Module):
    """LayerNorm whose scale and shift come from a conditioning vector: norm(x) * (1 + scale) + shift."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.project = nn.Linear(d_model, 2 * d_model)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.project(cond).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, D] each
        return self.norm(x) * (1 + scale) + shift


class Norm(nn.Module):
    """A plain LayerNorm or an AdaptiveLayerNorm behind one call: norm(x, cond)."""

    def __init__(self, d_model: int, adaptive: bool):
        super().__init__()
        self.adaptive = adaptive
        self.norm = AdaptiveLayerNorm(d_model) if adaptive else nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if self.adaptive:
            if cond is None:
                raise ValueError("this transformer uses adaptive layer norm: pass cond [B, D]")
            return self.norm(x, cond)
        return self.norm(x)


class Block(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + ffn(norm(x)), `dropout` on both branches' outputs
    and `attention_dropout` on the attention probabilities."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float = 0.0,
                 ffn: str = "gelu", adaptive: bool = False, attention_dropout: float = 0.0):
        super().__init__()
        self.attention_norm = Norm(d_model, adaptive)
        self.attention = SelfAttention(d_model, n_heads, attention_dropout)
        self.ffn_norm = Norm(d_model, adaptive)
        self.ffn = FeedForward(d_model, ffn_dim, ffn)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None,
                cache: LayerCache | None = None, keep: slice | None = None) -> torch.Tensor:
        attended = self.attention(self.attention_norm(x, cond), mask, cache, keep)
        x = (x if keep is None else x[:, keep]) + self.dropout(attended)
        return x + self.dropout(self.ffn(self.ffn_norm(x, cond)))


class Transformer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_layers: int, ffn_dim: int, dropout: float = 0.0,
                 ffn: str = "gelu", adaptive: bool = False, attention_dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, ffn_dim, dropout, ffn, adaptive, attention_dropout) for _ in range(n_layers)
        )
        self.norm = Norm(d_model, adaptive)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None,
                cache: KVCache | None = None, keep: slice | None = None) -> torch.Tensor:
        """x [B, L, D], mask [B, 1, L, S] bool, cond [B, D] (adaptive only) -> [B, L, D].

        With a cache, x holds the new positions only; their keys and values are appended to the
        cache and `mask` covers the cached positions followed by the new ones. The caller keeps
        `cache.valid` up to date.

        keep: the positions whose output the caller reads (e.g. the NAR's target frames); the last
        block computes only those (its queries, residual and feed-forward; every position stays a
        key and in the cache), and the output is [B, L', D]. The same values as slicing the full
        output, for a fraction of the last block's work.
        """
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"the cache has {len(cache.layers)} layers, the transformer {len(self.blocks)}")
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cond, cache.layers[i] if cache is not None else None, keep if i == last else None)
        return self.norm(x, cond)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, mask: torch.Tensor, cond: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every block's attention probabilities for a full forward: [B, H, L, L] per block."""
        maps = []
        for block in self.blocks:
            maps.append(block.attention.weights(block.attention_norm(x, cond), mask))
            x = block(x, mask, cond)
        return maps
