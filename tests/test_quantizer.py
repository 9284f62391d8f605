import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import codec.quantizer as quantizer_module
from codec.quantizer import QuantizerOutput, ResidualVectorQuantizer, VectorQuantizer


def clusters(n_clusters: int, dim: int, B: int, T: int, spread: float = 0.05, seed: int = 0):
    """Latents [B, D, T] drawn around `n_clusters` centres [C, D], plus the centres."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_clusters, dim, generator=g)
    which = torch.randint(0, n_clusters, (B, T), generator=g)
    z = centres[which] + spread * torch.randn(B, T, dim, generator=g)  # [B, T, D]
    return z.transpose(1, 2).contiguous(), centres


def batch_standardization(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel (mean, std) [D, 1] a training step standardizes z [B, D, T] with."""
    mean = z.mean(dim=(0, 2))
    std = (z.var(dim=(0, 2), unbiased=False) + 1e-5).sqrt()
    return mean[:, None], std[:, None]


def rvq(**kwargs) -> ResidualVectorQuantizer:
    options = dict(dim=8, n_q=4, codebook_size=16)
    options.update(kwargs)
    return ResidualVectorQuantizer(**options)


@pytest.mark.parametrize("training", [True, False])
def test_shapes_and_codes_in_range(training):
    torch.manual_seed(0)
    q = rvq().train(training)
    z = torch.randn(3, 8, 20)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == z.shape
    assert out.codes.shape == (3, 4, 20) and out.codes.dtype == torch.long
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 16
    assert out.commitment_loss.shape == () and float(out.commitment_loss) > 0
    assert out.n_q == 4 and out.perplexity.shape == (4,) and out.usage.shape == (4,)
    assert out.layer_mask.shape == (3, 4) and out.layer_mask.dtype == torch.bool
    assert q.encode(z, n_q=2).shape == (3, 2, 20)
    assert q.decode(out.codes[:, :3]).shape == z.shape
    with pytest.raises(ValueError, match="n_q"):
        q(z, n_q=5)


def test_decode_of_encode_equals_forward_in_eval():
    torch.manual_seed(0)
    q = rvq()
    z = torch.randn(4, 8, 30)
    q.train()(z)  # initialise the codebooks
    q.eval()
    out = q(z)
    codes = q.encode(z)
    assert torch.equal(codes, out.codes)
    assert torch.equal(q.decode(codes), out.z_q)
    assert out.layer_mask.all()


@pytest.mark.parametrize("training", [True, False])
def test_straight_through_gradient_is_the_identity(training):
    # Each layer's residual is z minus a constant, so summing per-layer
    # estimators would give K * upstream; the quantizer must act as the identity.
    torch.manual_seed(0)
    q = rvq(quantizer_dropout=0.5).train(training)
    z = torch.randn(6, 8, 10, requires_grad=True)
    upstream = torch.randn(6, 8, 10)
    out = q(z)
    (out.z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)

    z.grad = None
    q(z).z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # 1, not n_q


def test_commitment_loss_reaches_z_through_every_layer():
    torch.manual_seed(0)
    q = rvq()
    q.train()(torch.randn(4, 8, 30))
    q.eval()
    z = torch.randn(2, 8, 12, requires_grad=True)
    out = q(z)
    out.commitment_loss.backward()

    # Analytic gradient: loss = mean_k mean((s (x_k - q_k))^2) with x_k = (z - m) / s - sum_{j<k} q_j,
    # m and s the running mean and std, so d loss / dz = sum_k 2 s (x_k - q_k) / (numel K).
    mean, std = q.running_mean[:, None], q.running_std[:, None]
    residual, layer_grads = (z.detach() - mean) / std, []
    for k, layer in enumerate(q.layers):
        code_vectors = layer.decode(out.codes[:, k])
        layer_grads.append(2 * std * (residual - code_vectors) / (z.numel() * q.n_q))
        residual = residual - code_vectors
    for grad in layer_grads:
        assert grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, sum(layer_grads))
    assert not torch.allclose(z.grad, layer_grads[0])  # the encodec #25 chain would leave only this


def test_forcing_one_codebook_uses_only_the_first():
    torch.manual_seed(0)
    q = rvq()
    z = torch.randn(3, 8, 25)
    untouched = {k: v.clone() for k, v in q.state_dict().items() if k.startswith(("layers.1.", "layers.2.", "layers.3."))}
    out = q.train()(z, n_q=1)
    assert out.codes.shape == (3, 1, 25) and out.n_q == 1
    assert all(torch.equal(q.state_dict()[k], v) for k, v in untouched.items())  # layers 2.. never ran
    q.eval()
    out = q(z, n_q=1)
    torch.testing.assert_close(out.z_q, q.running_mean[:, None] + q.running_std[:, None] * q.layers[0].decode(out.codes[:, 0]))
    assert torch.equal(out.codes, q.encode(z)[:, :1])


def test_quantizer_dropout_masks_trailing_layers_per_item():
    torch.manual_seed(0)
    q = rvq(quantizer_dropout=1.0)
    z = torch.randn(200, 8, 4)
    q.train()(z)  # initialise, so that the next step starts from a known codebook
    codebooks = [layer.embedding.clone() for layer in q.layers]
    out = q(z)
    n_used = out.layer_mask.sum(dim=1)  # [B]
    assert set(n_used.tolist()) == {1, 2, 3, 4}  # uniform in [1, n_q]
    assert torch.equal(out.layer_mask, torch.arange(4)[None, :] < n_used[:, None])  # a prefix per item
    # z_q holds only the item's first n codebooks, taken from the codebooks before this step's update,
    # mapped back from the standardized scale.
    mean, std = batch_standardization(z)
    expected = torch.stack(
        [sum(codebooks[k][out.codes[b, k]] for k in range(int(n_used[b]))) for b in range(200)]
    ).transpose(1, 2)
    expected = mean + std * expected
    torch.testing.assert_close(out.z_q, expected)
    # Dropped layers still get real codes (the residual chain runs for every item).
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < 16

    assert q.eval()(z).layer_mask.all()
    assert rvq(quantizer_dropout=0.0).train()(z).layer_mask.all()


def test_dropped_layers_do_not_count_in_the_commitment_loss():
    torch.manual_seed(0)
    q = rvq(quantizer_dropout=1.0, decay=0.5)
    z = torch.randn(64, 8, 6)
    q.train()(z)
    codebooks = [layer.embedding.clone() for layer in q.layers]
    out = q(z)
    mean, std = batch_standardization(z)
    residual, per_layer = (z - mean) / std, []
    for k in range(4):
        code_vectors = codebooks[k][out.codes[:, k]].transpose(1, 2)
        per_layer.append(((std * (residual - code_vectors)) ** 2).mean(dim=(1, 2)))
        residual = residual - code_vectors
    per_layer = torch.stack(per_layer, dim=1)  # [B, K]
    mask = out.layer_mask
    expected = ((per_layer * mask).sum(1) / mask.sum(1)).mean()
    torch.testing.assert_close(out.commitment_loss, expected)


def test_kmeans_initialisation_on_the_first_training_batch(monkeypatch):
    torch.manual_seed(0)
    z = 3 + torch.randn(8, 4, 64)  # away from the standard normal random codes
    points = z.transpose(1, 2).reshape(-1, 4)  # [N, D]
    vq = VectorQuantizer(dim=4, codebook_size=8)
    random_init = vq.embedding.clone()

    def error(codebook: torch.Tensor) -> float:
        return float(torch.cdist(points, codebook).min(dim=1).values.pow(2).mean())

    kmeans_runs = []
    kmeans = quantizer_module._kmeans
    monkeypatch.setattr(quantizer_module, "_kmeans", lambda *args: kmeans_runs.append(1) or kmeans(*args))
    vq.eval()(z)
    assert not vq.initialized and torch.equal(vq.embedding, random_init) and not kmeans_runs  # eval never initialises
    vq.train()(z)
    assert vq.initialized and len(kmeans_runs) == 1
    assert error(vq.embedding) < 0.2 * error(random_init)
    assert ((vq.embedding >= points.min(dim=0).values) & (vq.embedding <= points.max(dim=0).values)).all()
    vq(z)
    assert len(kmeans_runs) == 1  # only the first training batch


def test_ema_moves_the_codebook_toward_the_data():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=4, codebook_size=1, decay=0.9).train()
    z = 5 + torch.randn(4, 4, 32)
    mean = z.mean(dim=(0, 2))
    vq.initialized.fill_(True)  # skip k-means: start from the standard normal code, far from the data
    vq.cluster_size.fill_(4 * 32)  # as if it had seen batches of this size
    vq.embed_sum.copy_(vq.embedding * 4 * 32)
    distances = [float((vq.embedding[0] - mean).norm())]
    for _ in range(30):
        vq(z)
        distances.append(float((vq.embedding[0] - mean).norm()))
    assert distances[0] > 5
    # The only code takes every vector, so each step closes a (1 - decay) share of the gap.
    ratios = torch.tensor(distances[1:]) / torch.tensor(distances[:-1])
    torch.testing.assert_close(ratios, torch.full((30,), 0.9), atol=1e-3, rtol=0)


def test_a_dead_code_is_replaced_and_used():
    torch.manual_seed(0)
    z, centres = clusters(n_clusters=4, dim=4, B=8, T=32, seed=1)
    vq = VectorQuantizer(dim=4, codebook_size=4, kmeans_init=False, decay=0.9)
    far = torch.full((4,), 100.0)
    codebook = torch.cat([centres[:3], far[None]])  # code 3 is nowhere near the data
    vq.embedding.copy_(codebook)
    vq.embed_sum.copy_(codebook)
    vq.initialized.fill_(True)
    vq.train()
    assert (vq.encode(z) == 3).sum() == 0
    for _ in range(30):
        vq(z)
    points = z.transpose(1, 2).reshape(-1, 4)
    assert torch.cdist(vq.embedding[3:], points).min() < 1.0  # moved onto the data
    assert (vq.encode(z) == 3).sum() > 0  # and now wins vectors


def test_replacing_a_dead_code_resets_its_statistics():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=4, codebook_size=4, dead_code_threshold=0.1)
    vq.initialized.fill_(True)
    vq.cluster_size.copy_(torch.tensor([10.0, 10.0, 10.0, 0.5]))  # code 3 is below 0.1 * 30.5 / 4
    vq.embed_sum.copy_(vq.embedding * vq.cluster_size[:, None])
    old = vq.embedding.clone()
    vectors = torch.randn(50, 4)
    dead = vq.replace_dead_codes(vectors)
    assert dead.tolist() == [False, False, False, True]
    torch.testing.assert_close(vq.embedding[:3], old[:3])
    expected = 30.5 / 4  # the EMA count of a code under uniform use
    assert float(vq.cluster_size[3]) == pytest.approx(expected)
    assert (vectors - vq.embedding[3]).norm(dim=1).min() < 1e-5  # a vector of the batch
    torch.testing.assert_close(vq.embed_sum[3], vq.embedding[3] * expected)

    # The next EMA step moves it toward its new vectors, not back to the old sum.
    new_code = vq.embedding[3].clone()
    vq.train()(new_code[None, :, None].expand(2, 4, 8).contiguous())
    torch.testing.assert_close(vq.embedding[3], new_code)
    assert not vq.replace_dead_codes(vectors).any()


def test_perplexity_and_usage():
    torch.manual_seed(0)
    vq_codebook = torch.randn(16, 8)
    q = rvq(n_q=1).eval()
    q.layers[0].embedding.copy_(vq_codebook)
    uniform = vq_codebook[torch.arange(16).repeat(8)].T[None]  # every code 8 times: [1, D, 128]
    out = q(uniform)
    assert float(out.usage[0]) == 1.0
    assert float(out.perplexity[0]) == pytest.approx(16.0, rel=1e-5)
    constant = vq_codebook[5][None, :, None].expand(2, 8, 10)
    out = q(constant)
    assert float(out.usage[0]) == 1 / 16
    assert float(out.perplexity[0]) == pytest.approx(1.0)

    q = rvq().train()
    out = q(torch.randn(8, 8, 64))  # k-means on gaussian data spreads usage
    assert (out.perplexity > 8).all() and (out.perplexity <= 16).all()
    assert (out.usage > 0.75).all() and (out.usage <= 1).all()


@pytest.mark.parametrize("kmeans_init", [True, False])
def test_more_training_and_more_codebooks_reduce_the_error(kmeans_init):
    torch.manual_seed(0)
    q = rvq(kmeans_init=kmeans_init, decay=0.9, quantizer_dropout=0.0)
    data = torch.randn(8, 8, 64)

    def error(n_q: int = 4) -> float:
        return float(F.mse_loss(q.decode(q.encode(data, n_q=n_q)), data))

    errors = [error()]
    for step in range(30):
        q.train()(data[step % 4 * 2 : step % 4 * 2 + 2])  # fixed data, four batches in turn
        errors.append(error())
    assert errors[-1] < 0.3 * errors[0]
    assert errors[-1] < 0.9 * errors[1]  # EMA keeps improving after the first step (and its k-means)
    assert error(1) > error(2) > error(3) > error(4)


def test_an_encoder_learns_through_the_quantizer():
    torch.manual_seed(0)
    encoder, decoder = torch.nn.Conv1d(4, 8, 1), torch.nn.Conv1d(8, 4, 1)
    q = rvq(quantizer_dropout=0.5)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    x, _ = clusters(n_clusters=12, dim=4, B=4, T=32, spread=0.3)
    losses = []
    for _ in range(60):
        out = q.train()(encoder(x))
        loss = F.mse_loss(decoder(out.z_q), x) + 0.25 * out.commitment_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5])


def test_state_dict_round_trip_gives_identical_codes():
    torch.manual_seed(0)
    q = rvq()
    for _ in range(3):
        q.train()(torch.randn(4, 8, 16))
    state = q.state_dict()
    assert {"layers.0.embedding", "layers.0.cluster_size", "layers.0.embed_sum", "layers.0.initialized"} <= set(state)

    torch.manual_seed(1)
    loaded = rvq()
    assert not loaded.layers[0].initialized
    loaded.load_state_dict(state)
    assert all(bool(layer.initialized) for layer in loaded.layers)
    for key, value in q.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    z = torch.randn(2, 8, 30)
    assert torch.equal(q.eval().encode(z), loaded.eval().encode(z))
    # Loaded as initialised, its next training step updates by EMA rather than rerunning k-means.
    q.train()(z)
    loaded.train()(z)
    for key, value in q.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def _distributed_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(rank)  # different data, and different random state, on each process
    q = rvq(codebook_size=8, dead_code_threshold=0.5)
    for _ in range(5):
        q.train()(torch.randn(2, 8, 16) + rank)
    gathered = [None] * world_size
    dist.all_gather_object(gathered, {k: v.clone() for k, v in q.state_dict().items()})
    if rank == 0:
        torch.save(gathered, result_file)
    dist.destroy_process_group()


def test_distributed_processes_keep_identical_codebooks(tmp_path):
    result_file = tmp_path / "states.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(result_file)), nprocs=2)
    first, second = torch.load(result_file, weights_only=True)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert all(bool(first[f"layers.{k}.initialized"]) for k in range(4))


def _statistics_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    q = VectorQuantizer(4, 8, kmeans_init=False, dead_code_threshold=0.0).train()
    q(torch.randn(4, 4, 10).chunk(world_size)[rank])  # each process its half of one batch
    if rank == 0:
        torch.save({k: v.clone() for k, v in q.state_dict().items()}, result_file)
    dist.destroy_process_group()


def test_codebook_statistics_are_summed_over_processes(tmp_path):
    """Two processes with half a batch each update the codebook as one process with the whole batch."""
    result_file = tmp_path / "state.pt"
    mp.spawn(_statistics_worker, args=(2, str(tmp_path / "init"), str(result_file)), nprocs=2)
    torch.manual_seed(0)
    whole = VectorQuantizer(4, 8, kmeans_init=False, dead_code_threshold=0.0).train()
    whole(torch.randn(4, 4, 10))
    split = torch.load(result_file, weights_only=True)
    for key in ("cluster_size", "embed_sum", "embedding"):
        torch.testing.assert_close(split[key], whole.state_dict()[key])


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="quantizer_dropout"):
        rvq(quantizer_dropout=1.5)
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(4, 8, decay=1.0)
    with pytest.raises(ValueError, match="n_q"):
        rvq(n_q=0)


def test_codebooks_stay_alive_while_the_latent_drifts():
    # An encoder's latent changes scale and offset early in training faster than EMA
    # codes follow; standardizing keeps every codebook in use instead of collapsing.
    torch.manual_seed(0)
    q = rvq(dim=8, codebook_size=64, quantizer_dropout=0.0, stats_momentum=0.1)
    for step in range(100):
        scale, offset = 1.0 + 0.2 * min(step, 50), 0.3 * min(step, 50)  # drifts, then settles
        out = q.train()(offset + scale * torch.randn(4, 8, 64))
    assert (out.perplexity > 20).all(), out.perplexity
    # Eval uses the running statistics, which have caught up with the settled latent.
    z = offset + scale * torch.randn(4, 8, 64)
    assert (q.eval()(z).perplexity > 20).all()
    relative_error = F.mse_loss(q.decode(q.encode(z)), z) / z.var()
    assert relative_error < 0.5


def test_kmeans_on_a_batch_smaller_than_the_codebook_starts_every_code_distinct():
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=4, codebook_size=64).train()
    vq(torch.randn(1, 4, 20))  # 20 vectors for 64 codes
    assert torch.cdist(vq.embedding, vq.embedding).add(torch.eye(64) * 1e9).min() > 1e-4
    # Each code starts with an average code's count, so none is taken for dead on the first step.
    assert (vq.cluster_size > 0.5 * 20 / 64).sum() >= 20
