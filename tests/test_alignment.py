"""Echo's aligner, aligned token shards, the duration-guided AR and the reading instruments."""

import numpy as np
import pytest
import torch

from codec.interface import CodecIdentity
from data.frontend import TextFrontend
from data.lm_data import LMDataset, PromptConfig, join_prompt_transcript
from data.tokens import TokenCorpus, TokenShardWriter, write_durations
from lm.aligner import Aligner, AlignerConfig, beta_binomial_log_prior, monotonic_alignment_search
from lm.ar import ARConfig, ARModel
from lm.generation import generate_ar
from lm.layout import frame_mask
from lm.reading import attention_stats, shuffle_text
from lm.sampling import SamplingConfig, guide

V, C, K = 24, 32, 2
TINY = dict(text_vocab_size=V, codebook_size=C, n_q=K, d_model=32, n_heads=4, n_layers=2, ffn_dim=64, dropout=0.0)


def spoken(seed: int, B: int = 8) -> dict[str, torch.Tensor]:
    """Utterances whose frames say their tokens: token v sounds like code v (plus noise on
    codebook 2), for a random 1..4 frames each. Returns the batch and the true durations [B, N]."""
    g = torch.Generator().manual_seed(seed)
    text_lengths = torch.randint(4, 9, (B,), generator=g)
    N = int(text_lengths.max())
    text = torch.zeros(B, N, dtype=torch.long)
    durations = torch.zeros(B, N, dtype=torch.long)
    frames = []
    for b, n in enumerate(text_lengths.tolist()):
        text[b, :n] = torch.randperm(V - 2, generator=g)[:n] + 2  # distinct tokens within an item
        durations[b, :n] = torch.randint(1, 5, (n,), generator=g)
        frames.append(torch.repeat_interleave(text[b, :n], durations[b, :n]))
    code_lengths = torch.tensor([len(f) for f in frames])
    codes = torch.zeros(B, K, int(code_lengths.max()), dtype=torch.long)
    for b, f in enumerate(frames):
        codes[b, 0, : len(f)] = f
        codes[b, 1, : len(f)] = torch.randint(0, C, (len(f),), generator=g)
    return dict(text=text, text_lengths=text_lengths, codes=codes, code_lengths=code_lengths, durations=durations)


# -- the aligner ------------------------------------------------------------------------------------


def test_monotonic_alignment_search_finds_the_best_path():
    truth = np.array([2, 1, 3])
    log_probs = np.full((6, 3), -5.0)
    log_probs[np.arange(6), np.repeat(np.arange(3), truth)] = 0.0
    assert monotonic_alignment_search(log_probs).tolist() == truth.tolist()
    durations = monotonic_alignment_search(np.random.default_rng(0).normal(size=(20, 7)))
    assert durations.sum() == 20 and durations.min() >= 1
    with pytest.raises(ValueError, match="cannot cover"):
        monotonic_alignment_search(np.zeros((2, 3)))


def test_beta_binomial_prior_is_a_distribution_along_the_diagonal():
    log_prior = beta_binomial_log_prior(torch.tensor([5, 3]), torch.tensor([20, 9]), N=5, T=20)
    probs = log_prior.exp() * (torch.arange(5) < torch.tensor([5, 3])[:, None])[:, None, :]
    assert torch.allclose(probs[0].sum(-1), torch.ones(20), atol=1e-4)
    assert torch.allclose(probs[1, :9].sum(-1), torch.ones(9), atol=1e-4)
    peaks = probs[0].argmax(-1)
    assert peaks[0] == 0 and peaks[-1] == 4 and bool((peaks[1:] >= peaks[:-1]).all())


def test_aligner_learns_the_durations_and_saves(tmp_path, one_thread):
    torch.manual_seed(0)
    aligner = Aligner(AlignerConfig(text_vocab_size=V, codebook_size=C, n_q=K, d_model=32, n_layers=1,
                                    align_dim=16)).train()
    optimizer = torch.optim.Adam(aligner.parameters(), lr=3e-3)
    first = None
    for step in range(150):
        x = spoken(step)
        loss = aligner(x["text"], x["text_lengths"], x["codes"], x["code_lengths"]).loss
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    aligner.eval()
    x = spoken(1000)
    durations = aligner.durations(x["text"], x["text_lengths"], x["codes"], x["code_lengths"])
    assert torch.equal(durations.sum(1), x["code_lengths"])
    real = torch.arange(x["text"].shape[1]) < x["text_lengths"][:, None]
    assert bool((durations[real] >= 1).all()) and bool((durations[~real] == 0).all())
    frames = torch.arange(x["codes"].shape[2]) < x["code_lengths"][:, None]
    T = x["codes"].shape[2]
    found = torch.stack([_align(d, T) for d in durations])
    truth = torch.stack([_align(d, T) for d in x["durations"]])
    assert (found == truth)[frames].float().mean() > 0.95  # frames given to the token they speak
    loaded = Aligner.from_pretrained(aligner.save_pretrained(tmp_path / "aligner"))
    assert torch.equal(loaded.durations(x["text"], x["text_lengths"], x["codes"], x["code_lengths"]), durations)


# -- aligned token shards -------------------------------------------------------------------------------


def test_durations_travel_from_shards_to_batches(tmp_path):
    frontend = TextFrontend.build(["one two three", "four five"])
    identity = CodecIdentity(name="echo", config_hash="0" * 16, sample_rate=16000, frame_rate=50.0, n_q=K,
                             codebook_size=C)
    with TokenShardWriter(tmp_path, identity, frontend) as writer:
        for i, text in enumerate(["one two three", "four five", "one five"]):
            ids = frontend.encode(text, "en-us")
            writer.add(f"u{i}", torch.randint(0, C, (K, 3 * len(ids))), torch.tensor(ids), speaker="s",
                       duration=0.1, text=text)
    corpus = TokenCorpus.open(tmp_path)
    assert not corpus.has_durations and corpus[0].durations is None
    shard = corpus.records[0].shard
    lengths = [r.n_text_tokens for r in corpus.records]
    write_durations(tmp_path, shard, torch.full((sum(lengths),), 3))
    with pytest.raises(ValueError, match="durations must lie"):
        write_durations(tmp_path, shard, torch.full((sum(lengths),), -1))
    corpus = TokenCorpus.open(tmp_path)
    assert corpus.has_durations and corpus[1].durations.tolist() == [3] * lengths[1]
    for mode in ("prefix", "speaker"):
        dataset = LMDataset(corpus, PromptConfig(mode=mode, min_seconds=0.04, max_seconds=0.08))
        example = dataset[0]
        assert example.alignment.shape == (example.codes.shape[1],)
        full = torch.arange(lengths[0]).repeat_interleave(3)
        assert example.alignment.tolist() == full[len(full) - example.codes.shape[1]:].tolist()
        batch = dataset.collate([dataset[0], dataset[1]])
        assert batch.alignment.shape == batch.codes[:, 0].shape


def test_transcribed_prompts_read_the_target_through_the_joined_text(tmp_path):
    frontend = TextFrontend.build(["one two three", "four five"])
    identity = CodecIdentity(name="echo", config_hash="0" * 16, sample_rate=16000, frame_rate=50.0, n_q=K,
                             codebook_size=C)
    with TokenShardWriter(tmp_path, identity, frontend) as writer:
        for i, text in enumerate(["one two three", "four five"]):
            ids = frontend.encode(text, "en-us")
            writer.add(f"u{i}", torch.randint(0, C, (K, 3 * len(ids))), torch.tensor(ids), speaker="s",
                       duration=0.1, text=text)
    lengths = [r.n_text_tokens for r in TokenCorpus.open(tmp_path).records]
    write_durations(tmp_path, TokenCorpus.open(tmp_path).records[0].shard, torch.full((sum(lengths),), 3))
    corpus = TokenCorpus.open(tmp_path)
    target, source = corpus[1], corpus[0]
    example = LMDataset(corpus, PromptConfig(mode="transcribed", max_seconds=10.0))[1]

    assert example.mode == "transcribed" and example.prompt_id == "u0"
    assert torch.equal(example.prompt, source.codes) and torch.equal(example.codes, target.codes)
    tokens = frontend.decode(example.text.tolist())
    head = len(source.text) - 1 + 1  # the source without its <eos>, then the boundary
    assert tokens == [*frontend.decode(source.text.tolist())[:-1], "|", *frontend.decode(target.text.tolist())[2:]]
    own = torch.arange(len(target.text)).repeat_interleave(3)  # the token each frame speaks in its own text
    assert example.alignment[:6].tolist() == [head - 1] * 6  # <lang> and <bos>: the pause at the boundary
    assert torch.equal(example.text[example.alignment[6:]], target.text[own[6:]])  # then the same tokens as before
    assert join_prompt_transcript(source.text.tolist(), target.text.tolist(), frontend.vocab) == (
        example.text.tolist(), head)

    too_long = LMDataset(corpus, PromptConfig(mode="transcribed", min_seconds=0.02, max_seconds=0.1))[1]
    assert too_long.mode == "speaker" and torch.equal(too_long.text, target.text)


# -- the duration-guided AR ---------------------------------------------------------------------------


def guided(text_window: int | None = None) -> ARModel:
    torch.manual_seed(0)
    return ARModel(ARConfig(**TINY, duration_guided=True, text_window=text_window)).eval()


@pytest.mark.parametrize("text_window", [None, 1])
def test_guided_ar_cache_equals_forward_and_needs_alignment(one_thread, text_window):
    model, x = guided(text_window), spoken(0, B=3)
    prompt, prompt_lengths = x["codes"][:, :, :3], torch.tensor([3, 0, 2])
    alignment = torch.stack([_align(d, x["codes"].shape[2]) for d in x["durations"]])  # [B, T]
    out = model(x["text"], x["text_lengths"], prompt, prompt_lengths, x["codes"], x["code_lengths"], alignment=alignment)
    assert out.advance_loss is not None and 0 <= out.advance_accuracy <= 1
    logits, cache = model.prefill(x["text"], x["text_lengths"], prompt, prompt_lengths, start_index=alignment[:, 0])
    assert torch.allclose(logits, out.logits[:, 0], atol=1e-5)
    for t in range(4):
        logits, cache = model.step(x["codes"][:, 0, t], cache, alignment[:, t + 1] > alignment[:, t])
        assert torch.allclose(logits, out.logits[:, t + 1], atol=1e-5)
    with pytest.raises(ValueError, match="needs alignment"):
        model(x["text"], x["text_lengths"], prompt, prompt_lengths, x["codes"], x["code_lengths"])


def test_text_window_keeps_each_frames_attention_near_its_token(one_thread):
    model, x = guided(text_window=1), spoken(0, B=3)
    alignment = torch.stack([_align(d, x["codes"].shape[2]) for d in x["durations"]])  # [B, T]
    prompt, prompt_lengths = x["codes"][:, :, :2], torch.tensor([2, 0, 1])
    maps = model.text_attention(x["text"], x["text_lengths"], prompt, prompt_lengths, x["codes"], x["code_lengths"],
                                alignment=alignment)  # [layers, B, T, N]
    far = (torch.arange(maps.shape[-1]) - alignment[..., None]).abs() > 1  # [B, T, N]
    assert maps[:, far].abs().max() == 0
    assert torch.allclose(maps.sum(-1)[:, frame_mask(x["code_lengths"], maps.shape[2])], torch.tensor(1.0))
    with pytest.raises(ValueError, match="needs duration_guided"):
        ARConfig(**TINY, text_window=2)
    with pytest.raises(ValueError, match="non-negative"):
        ARConfig(**TINY, duration_guided=True, text_window=-1)


def _align(durations: torch.Tensor, T: int) -> torch.Tensor:
    index = torch.arange(len(durations)).repeat_interleave(durations)
    return torch.cat([index, index.new_zeros(T - len(index))])


def test_guided_generation_ends_after_the_last_token(one_thread):
    model, x = guided(), spoken(1, B=3)
    torch.nn.init.constant_(model.advance_head.bias, 5.0)  # always move on: one frame per token
    torch.nn.init.zeros_(model.advance_head.weight)
    empty = torch.zeros(3, K, 0, dtype=torch.long)
    result = generate_ar(model, x["text"], x["text_lengths"], empty, torch.zeros(3, dtype=torch.long),
                         max_new_tokens=50, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    assert result.finished.all() and torch.equal(result.lengths, x["text_lengths"])
    start = torch.tensor([2, 0, 1])  # after a prompt's transcript: only the rest is spoken
    result = generate_ar(model, x["text"], x["text_lengths"], empty, torch.zeros(3, dtype=torch.long),
                         max_new_tokens=50, start_index=start)
    assert torch.equal(result.lengths, x["text_lengths"] - start)
    with pytest.raises(ValueError, match="KV cache"):
        generate_ar(model, x["text"], x["text_lengths"], empty, torch.zeros(3, dtype=torch.long), max_new_tokens=5,
                    use_cache=False)


def test_guided_pointer_follows_the_real_text_under_classifier_free_guidance(one_thread):
    torch.manual_seed(0)
    model = ARModel(ARConfig(**TINY, duration_guided=True, text_window=1, text_dropout=0.1)).eval()
    x = spoken(2, B=3)
    prompt, prompt_lengths = x["codes"][:, :, :3], torch.tensor([3, 0, 2])
    greedy = SamplingConfig(temperature=0.0, cfg_scale=2.5)
    result = generate_ar(model, x["text"], x["text_lengths"], prompt, prompt_lengths, sampling=greedy,
                         max_new_tokens=40, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    for b in range(3):  # teacher-forced on what it wrote and the pointer it kept: the guided argmax is each code
        n, N, P = int(result.lengths[b]), int(x["text_lengths"][b]), int(prompt_lengths[b])
        codes = result.codes[b:b + 1, :n][:, None].expand(1, K, n)
        text = x["text"][b:b + 1, :N]
        logits = [model(t, x["text_lengths"][b:b + 1], prompt[b:b + 1, :, :P], prompt_lengths[b:b + 1], codes,
                        torch.tensor([n]), alignment=result.alignment[b:b + 1, :n]).logits[0, :n]
                  for t in (text, model.hide_text(text))]
        assert torch.equal(guide(*logits, 2.5)[:, :C].argmax(-1), result.codes[b, :n])
        assert result.alignment[b, n - 1] == N - 1 and (result.alignment[b, :n].diff() >= 0).all()


# -- the reading instruments ------------------------------------------------------------------------


def test_shuffle_text_permutes_real_tokens_only():
    text = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 0, 0, 0]])
    shuffled = shuffle_text(text, torch.tensor([4, 2]), torch.Generator().manual_seed(0))
    assert sorted(shuffled[0, :4].tolist()) == [5, 6, 7, 8] and shuffled[0, 4] == 0
    assert sorted(shuffled[1, :2].tolist()) == [9, 10] and shuffled[1, 2:].tolist() == [0, 0, 0]


def test_attention_stats_tell_a_diagonal_from_a_blur():
    alignment = torch.arange(5).repeat_interleave(2)[None]  # [1, 10]
    diagonal = torch.nn.functional.one_hot(alignment, 5).float()  # [1, 10, 5]
    stats = attention_stats(diagonal, torch.tensor([10]), alignment)
    assert stats == {"focus_rate": 1.0, "monotonicity": 1.0, "alignment_error": 0.0}
    blur = attention_stats(torch.full((1, 10, 5), 0.2), torch.tensor([10]), alignment)
    assert blur["focus_rate"] == pytest.approx(0.2) and blur["alignment_error"] > 1


def test_align_recipe_writes_every_shard_even_for_too_short_utterances(tmp_path, one_thread):
    from recipes import align

    frontend = TextFrontend.build(["one two three", "four five"])
    identity = CodecIdentity(name="echo", config_hash="0" * 16, sample_rate=16000, frame_rate=50.0, n_q=K,
                             codebook_size=C)
    frames = {"long": 30, "short": 3}  # "short" has fewer frames than text tokens
    with TokenShardWriter(tmp_path, identity, frontend, shard_size=1) as writer:
        for name, T in frames.items():
            ids = frontend.encode("one two three", "en-us")
            writer.add(name, torch.randint(0, C, (K, T)), torch.tensor(ids), speaker="s", duration=T / 50, text="x")
    corpus = TokenCorpus.open(tmp_path)
    torch.manual_seed(0)
    aligner = Aligner(AlignerConfig(text_vocab_size=len(frontend.vocab), codebook_size=C, n_q=K, d_model=16,
                                    n_layers=1, align_dim=8)).eval()
    stats = align.write_all_durations(aligner, corpus, max_frames=1000)
    assert stats["frames_per_token"] > 0
    corpus = TokenCorpus.open(tmp_path)
    assert corpus.has_durations
    for i in range(len(corpus)):
        item = corpus[i]
        assert int(item.durations.sum()) == item.codes.shape[1]
    again = align.write_all_durations(aligner, corpus, max_frames=1000)  # nothing left to write: read back
    assert again["frames_per_token"] == pytest.approx(stats["frames_per_token"])
