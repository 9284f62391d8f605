"""Residual vector quantization with EMA codebooks (EnCodec / Mimi style).

Letters: B batch, K codebooks, T frames, D width, N = B * T flattened vectors,
C codebook size.

The codebooks are not trained by gradient descent. Each code follows the
exponential moving average (EMA) of the vectors assigned to it, starts from
k-means on the first training batch, and is moved onto a vector of the batch
when it falls out of use. The encoder learns through the straight-through
estimator and the commitment loss. All codebook state lives in buffers, so a
`state_dict` holds the whole quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _world_size() -> int:
    return dist.get_world_size() if _is_distributed() else 1


def _is_rank_zero() -> bool:
    return not _is_distributed() or dist.get_rank() == 0


def _sum_across_processes(tensor: torch.Tensor) -> None:
    if _is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _broadcast_from_rank_zero(*tensors: torch.Tensor) -> None:
    if _is_distributed():
        for tensor in tensors:
            dist.broadcast(tensor, src=0)


def _sample_rows(vectors: torch.Tensor, n: int) -> torch.Tensor:
    """`n` random rows of `vectors` [N, D], without repetition when N >= n."""
    N = vectors.shape[0]
    if N >= n:
        index = torch.randperm(N, device=vectors.device)[:n]
    else:
        index = torch.randint(0, N, (n,), device=vectors.device)
    return vectors[index]  # [n, D]


def _nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code by squared L2 distance: vectors [N, D], codebook [C, D] -> [N]."""
    # |x - e|^2 = |x|^2 - 2 x.e + |e|^2, and |x|^2 is the same for every code.
    distance = codebook.pow(2).sum(dim=1) - 2 * vectors @ codebook.t()  # [N, C]
    return distance.argmin(dim=1)


def _kmeans(vectors: torch.Tensor, n_clusters: int, n_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on vectors [N, D] -> (means [C, D], counts [C] of the final assignment)."""
    means = _sample_rows(vectors, n_clusters)  # [C, D]
    for _ in range(n_iters):
        codes = _nearest_code(vectors, means)  # [N]
        counts = torch.bincount(codes, minlength=n_clusters)  # [C]
        sums = torch.zeros_like(means).index_add_(0, codes, vectors)  # [C, D]
        # An empty cluster keeps its mean; dead-code replacement moves it later.
        means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], means)
    counts = torch.bincount(_nearest_code(vectors, means), minlength=n_clusters)
    return means, counts.to(vectors.dtype)


class VectorQuantizer(nn.Module):
    """One codebook of `codebook_size` vectors of width `dim`, updated by EMA.

    Args:
        dim: width D of the vectors to quantize.
        codebook_size: number of codes C.
        decay: EMA decay of the codebook statistics.
        epsilon: floor for a code's EMA count when its centroid is computed.
        kmeans_init: start from k-means on the first training batch; otherwise
            from standard-normal vectors (fixed on the first training batch too,
            so that every process starts from rank 0's).
        kmeans_iters: Lloyd iterations of that k-means.
        dead_code_threshold: a code is dead when its EMA count falls below
            `dead_code_threshold * cluster_size.sum() / codebook_size`, i.e. this
            fraction of what it would get if every code were used equally (the
            Mimi rule; it does not depend on the batch size or on the number of
            processes). 0 turns replacement off.
        init_noise: when the first batch holds fewer vectors than codes, the
            codes k-means cannot place start at batch vectors plus Gaussian noise
            of this fraction of the batch's per-channel standard deviation.

    Buffers: `embedding` [C, D] (the codes), `cluster_size` [C] (EMA of the
    number of vectors each code gets per step), `embed_sum` [C, D] (EMA of their
    sum; embedding = embed_sum / cluster_size), `initialized` (bool).

    In training mode `forward` updates all of them; in eval mode nothing moves.
    Under torch.distributed the counts and sums are summed over processes and
    k-means results and replacements come from rank 0, so every process keeps
    the same codebook.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.1,
        init_noise: float = 0.3,
    ):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay is an EMA factor in (0, 1), got {decay}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {kmeans_iters}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold is a fraction of the uniform usage, >= 0, got {dead_code_threshold}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.decay = decay
        self.epsilon = epsilon
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.init_noise = init_noise

        embedding = torch.randn(codebook_size, dim)
        self.embedding: torch.Tensor
        self.cluster_size: torch.Tensor
        self.embed_sum: torch.Tensor
        self.initialized: torch.Tensor
        self.register_buffer("embedding", embedding)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", embedding.clone())
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize x [B, D, T] -> (quantized [B, D, T], codes [B, T]).

        `quantized` holds codebook vectors and carries no gradient. In training
        mode the first call initialises the codebook, and every call updates it
        after quantizing (EMA, then dead-code replacement).
        """
        B, D, T = x.shape
        vectors = x.detach().transpose(1, 2).reshape(B * T, D).float()  # [N, D]
        # Distances in bf16 would pick wrong codes, so the codebook math stays in fp32.
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            if self.training and not self.initialized:
                self._initialize(vectors)
            codes = _nearest_code(vectors, self.embedding)  # [N]
            quantized = self.embedding[codes]  # [N, D], a copy: the updates below do not touch it
            if self.training:
                self._ema_update(vectors, codes)
                self.replace_dead_codes(vectors)
        quantized = quantized.view(B, T, D).transpose(1, 2).to(x.dtype)  # [B, D, T]
        return quantized, codes.view(B, T)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D, T] -> codes LongTensor [B, T]; never changes the codebook."""
        B, D, T = x.shape
        vectors = x.transpose(1, 2).reshape(B * T, D).float()  # [N, D]
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _nearest_code(vectors, self.embedding).view(B, T)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T] -> code vectors [B, D, T]."""
        return F.embedding(codes, self.embedding).transpose(1, 2)

    @torch.no_grad()
    def replace_dead_codes(self, vectors: torch.Tensor) -> torch.Tensor:
        """Move every dead code onto a random row of `vectors` [N, D]; returns the dead mask [C].

        A replaced code restarts with the EMA count of an average code and the
        matching sum (vector x count). Its old sum would otherwise pull it
        straight back, and the count buys it about
        log(threshold) / log(decay) steps (229 at the defaults) to attract
        vectors before it can expire again.
        """
        expected = self.cluster_size.sum() / self.codebook_size  # EMA count of a code under uniform use
        dead = self.cluster_size < self.dead_code_threshold * expected  # [C]
        # The statistics are identical on every process, so all take the same branch.
        if not bool(dead.any()):
            return dead
        new_vectors = _sample_rows(vectors.float(), int(dead.sum()))  # [n_dead, D]
        _broadcast_from_rank_zero(new_vectors)
        self.cluster_size[dead] = expected
        self.embed_sum[dead] = new_vectors * expected
        self._refresh_embedding()
        return dead

    def _initialize(self, vectors: torch.Tensor) -> None:
        if self.kmeans_init and _is_rank_zero():
            N = vectors.shape[0]
            n_clusters = min(N, self.codebook_size)
            means, _ = _kmeans(vectors, n_clusters, self.kmeans_iters)
            if n_clusters < self.codebook_size:
                # A first batch smaller than the codebook would leave the other codes
                # empty (and k-means would put many of them on the same vector); start
                # them near random batch vectors instead, spread by a fraction of the
                # data's own scale, so that they take part from the first step.
                extra = _sample_rows(vectors, self.codebook_size - n_clusters)
                extra = extra + self.init_noise * vectors.std(dim=0) * torch.randn_like(extra)
                means = torch.cat([means, extra])
            # Every code starts as an average code: a k-means count of 1 or 2 would
            # expire at once under the relative dead-code rule. The EMA counts the
            # vectors of every process; rank 0 saw only its own.
            counts = torch.full((self.codebook_size,), N * _world_size() / self.codebook_size, device=vectors.device)
            self.cluster_size.copy_(counts)
            self.embed_sum.copy_(means * counts[:, None])
            self.embedding.copy_(means)
        _broadcast_from_rank_zero(self.embedding, self.cluster_size, self.embed_sum)
        self.initialized.fill_(True)

    def _ema_update(self, vectors: torch.Tensor, codes: torch.Tensor) -> None:
        # Counts and sums travel together: one all-reduce per step.
        ones = vectors.new_ones(vectors.shape[0], 1)
        stats = vectors.new_zeros(self.codebook_size, 1 + self.dim)  # [C, 1 + D]
        stats.index_add_(0, codes, torch.cat([ones, vectors], dim=1))
        _sum_across_processes(stats)
        self.cluster_size.lerp_(stats[:, 0], 1 - self.decay)
        self.embed_sum.lerp_(stats[:, 1:], 1 - self.decay)
        self._refresh_embedding()

    def _refresh_embedding(self) -> None:
        self.embedding.copy_(self.embed_sum / self.cluster_size.clamp(min=self.epsilon)[:, None])


@dataclass
class QuantizerOutput:
    """What `ResidualVectorQuantizer.forward` returns.

    `codes` always holds the real nearest codes of every layer that ran, for
    every item; `layer_mask` says which of them an item's `z_q` and commitment
    loss used (quantizer dropout drops the trailing layers of some items).
    """

    z_q: torch.Tensor  # [B, D, T] sum of the used code vectors; gradient passes straight through to z
    codes: torch.Tensor  # LongTensor [B, K, T], K = n_q
    commitment_loss: torch.Tensor  # scalar: per item, mean over its used layers of MSE(residual, code vector)
    n_q: int  # number of codebooks K that ran
    perplexity: torch.Tensor  # [K] exp(entropy of each codebook's code histogram in this batch)
    usage: torch.Tensor  # [K] fraction of each codebook's codes that occur in this batch
    layer_mask: torch.Tensor  # bool [B, K]: True where the item used the layer; always a prefix of the layers


class ResidualVectorQuantizer(nn.Module):
    """`n_q` EMA codebooks, each quantizing what the previous ones left over.

    The latent is standardized per channel before it is quantized: in training
    with the batch's mean and standard deviation (summed over processes), in
    eval with running averages of them, and the quantized value is mapped back.
    EMA codebooks follow the latent only slowly; without this the encoder's
    latent drifts in scale and offset faster than the codes follow, every
    vector lands on one or two codes and the codebooks collapse (observed on the
    `cpu` preset: perplexity 1-2 per codebook within ten steps). Standardized,
    the codes keep covering the latent whatever its scale does.

    Args:
        dim: width D of the latent.
        n_q: number of codebooks.
        codebook_size: codes per codebook.
        quantizer_dropout: in training, the probability that an item uses only
            the first n codebooks, n uniform in [1, K] (DAC); otherwise it uses
            all K. Codebook 1 alone must then decode well: the AR LM writes it.
        decay, epsilon, kmeans_init, kmeans_iters, dead_code_threshold,
            init_noise: as in `VectorQuantizer`, for every codebook.
        stats_momentum: weight of each training batch in the running mean and
            standard deviation used in eval.

    Buffers: `running_mean` [D], `running_std` [D], `stats_initialized` (bool).
    """

    def __init__(
        self,
        dim: int,
        n_q: int,
        codebook_size: int,
        quantizer_dropout: float = 0.5,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.1,
        init_noise: float = 0.3,
        stats_momentum: float = 0.01,
    ):
        super().__init__()
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout is a probability in [0, 1], got {quantizer_dropout}")
        self.dim = dim
        self.n_q = n_q
        self.codebook_size = codebook_size
        if not 0.0 < stats_momentum <= 1.0:
            raise ValueError(f"stats_momentum is a weight in (0, 1], got {stats_momentum}")
        self.quantizer_dropout = quantizer_dropout
        self.stats_momentum = stats_momentum
        self.layers = nn.ModuleList(
            VectorQuantizer(
                dim, codebook_size, decay, epsilon, kmeans_init, kmeans_iters, dead_code_threshold, init_noise
            )
            for _ in range(n_q)
        )
        self.running_mean: torch.Tensor
        self.running_std: torch.Tensor
        self.stats_initialized: torch.Tensor
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_std", torch.ones(dim))
        self.register_buffer("stats_initialized", torch.tensor(False))

    def forward(self, z: torch.Tensor, n_q: int | None = None) -> QuantizerOutput:
        """Quantize z [B, D, T] with the first `n_q` codebooks (all when None).

        In training mode this updates the codebooks and applies quantizer
        dropout; in eval mode every item uses all `n_q` codebooks.
        """
        B, D, T = z.shape
        K = self._check_n_q(n_q)
        layer_mask = self._layer_mask(B, K, z.device)  # [B, K]
        mean, std = self._standardization(z)  # [D, 1] each
        x = (z - mean) / std  # [B, D, T], what the codebooks see

        residual = x
        quantized_sum = torch.zeros_like(z)  # [B, D, T]
        codes, layer_losses = [], []
        # Every layer runs on every item, dropped or not: the residual an item
        # brings to layer k is a genuine sample of that layer's input, so it feeds
        # the EMA, and the codes stay the same whatever the dropout drew.
        for k, layer in enumerate(self.layers[:K]):
            quantized, layer_codes = layer(residual)  # [B, D, T], [B, T]
            # On the encoder's scale, so that standardizing does not change what the loss asks of it.
            layer_losses.append((std * (residual - quantized)).pow(2).mean(dim=(1, 2)))  # [B]
            quantized_sum = quantized_sum + quantized * layer_mask[:, k, None, None]
            # `quantized` carries no gradient (the codebook is buffers), so every
            # residual is z minus a constant and each layer's commitment loss
            # reaches z (the residual chain of encodec issue #25 cut all but the first).
            # mean and std carry no gradient either: they are statistics, not parameters.
            residual = residual - quantized
            codes.append(layer_codes)

        codes = torch.stack(codes, dim=1)  # [B, K, T]
        layer_losses = torch.stack(layer_losses, dim=1)  # [B, K]
        commitment_loss = ((layer_losses * layer_mask).sum(dim=1) / layer_mask.sum(dim=1)).mean()
        # One straight-through estimator on the sum: the value is exactly the sum of
        # code vectors and dz_q/dz = I. Summing per-layer estimators
        # x_k + (q_k - x_k).detach() would give n * I, since every x_k = z - constant,
        # so an item's gradient would grow with the number of codebooks it used.
        z_q = mean + std * quantized_sum + (z - z.detach())
        perplexity, usage = self._code_statistics(codes)
        return QuantizerOutput(z_q, codes, commitment_loss, K, perplexity, usage, layer_mask)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """z [B, D, T] -> codes LongTensor [B, K, T] with K = n_q (all when None); never changes the codebooks."""
        K = self._check_n_q(n_q)
        residual = (z - self.running_mean[:, None]) / self.running_std[:, None]
        codes = []
        for layer in self.layers[:K]:
            layer_codes = layer.encode(residual)  # [B, T]
            residual = residual - layer.decode(layer_codes).to(z.dtype)
            codes.append(layer_codes)
        return torch.stack(codes, dim=1)  # [B, K, T]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> z_q [B, D, T], the sum of the first K codebooks' vectors (K <= n_q)."""
        B, K, T = codes.shape
        self._check_n_q(K)
        z_q = self.layers[0].embedding.new_zeros(B, self.dim, T)
        for k in range(K):
            z_q = z_q + self.layers[k].decode(codes[:, k])
        return self.running_mean[:, None] + self.running_std[:, None] * z_q

    def decode_expected(self, probabilities: torch.Tensor) -> torch.Tensor:
        """probabilities [B, K, T, C] over the first K codebooks' codes -> z_q [B, D, T] from each codebook's
        expected code vector (`decode` for one-hot distributions)."""
        B, K, T, _ = probabilities.shape
        self._check_n_q(K)
        z_q = self.layers[0].embedding.new_zeros(B, self.dim, T)
        for k in range(K):
            z_q = z_q + (probabilities[:, k].to(z_q.dtype) @ self.layers[k].embedding).transpose(1, 2)
        return self.running_mean[:, None] + self.running_std[:, None] * z_q

    @torch.no_grad()
    def _standardization(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean [D, 1], std [D, 1]) to standardize z [B, D, T] with; updates the running ones in training."""
        if not self.training:
            return self.running_mean[:, None].to(z.dtype), self.running_std[:, None].to(z.dtype)
        B, D, T = z.shape
        v = z.detach().float()
        # Sums over every process, so that all of them standardize alike and keep one codebook.
        moments = torch.stack([v.sum(dim=(0, 2)), v.pow(2).sum(dim=(0, 2)), v.new_full((D,), B * T)])  # [3, D]
        _sum_across_processes(moments)
        mean = moments[0] / moments[2]
        std = (moments[1] / moments[2] - mean.pow(2)).clamp(min=0).add(1e-5).sqrt()
        if not self.stats_initialized:
            self.running_mean.copy_(mean)
            self.running_std.copy_(std)
            self.stats_initialized.fill_(True)
        else:
            self.running_mean.lerp_(mean, self.stats_momentum)
            self.running_std.lerp_(std, self.stats_momentum)
        return mean[:, None].to(z.dtype), std[:, None].to(z.dtype)

    def _check_n_q(self, n_q: int | None) -> int:
        if n_q is None:
            return self.n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q must be in [1, {self.n_q}], got {n_q}")
        return n_q

    def _layer_mask(self, B: int, K: int, device: torch.device) -> torch.Tensor:
        """Which of the K layers each item uses: bool [B, K], a prefix per item."""
        n_used = torch.full((B,), K, device=device)  # [B]
        if self.training and self.quantizer_dropout > 0:
            dropped = torch.rand(B, device=device) < self.quantizer_dropout
            n_used = torch.where(dropped, torch.randint(1, K + 1, (B,), device=device), n_used)
        return torch.arange(K, device=device)[None, :] < n_used[:, None]

    def _code_statistics(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per codebook, from codes [B, K, T]: (perplexity [K], usage [K])."""
        K = codes.shape[1]
        flat = codes.transpose(0, 1).reshape(K, -1)  # [K, B * T]
        counts = torch.zeros(K, self.codebook_size, device=codes.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))  # [K, C]
        probs = counts / counts.sum(dim=1, keepdim=True)
        perplexity = torch.exp(-torch.special.xlogy(probs, probs).sum(dim=1))
        usage = (counts > 0).float().mean(dim=1)
        return perplexity, usage
