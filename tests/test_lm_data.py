"""LM examples, prompts, the frame-budget batch sampler and collate (data/lm_data.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from codec.interface import CodecIdentity
from data.frontend import TextFrontend
from data.lm_data import FrameBudgetBatchSampler, LMBatch, LMDataset, PromptConfig, collate
from data.tokens import TokenCorpus, TokenShardWriter
from data.vocab import Vocabulary

FRAME_RATE = 50.0
IDENTITY = CodecIdentity("echo", "0123abcd", 16000, FRAME_RATE, 3, 32)
SPEAKERS = {"a": 5, "b": 3, "lonely": 1}  # utterances per speaker; "lonely" has nobody else to prompt from


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> TokenCorpus:
    """Nine utterances of 1 to 8 s, made of random codes (K=3) and text ids."""
    directory = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    vocab = Vocabulary(["a", "b", "c", "d", "e"], ["en-us"])
    with TokenShardWriter(directory, IDENTITY, TextFrontend(vocab), shard_size=4) as writer:
        for speaker, n in SPEAKERS.items():
            for j in range(n):
                T, N = int(rng.integers(50, 400)), int(rng.integers(5, 40))
                writer.add(f"{speaker}{j}", rng.integers(0, 32, size=(3, T)), rng.integers(1, len(vocab), size=N),
                           speaker=speaker, duration=T / FRAME_RATE, text=f"{speaker} says {j}")
    return TokenCorpus.open(directory)


def lengths(n: int = 40, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(10, 300, size=n).tolist()


def index_of(corpus: TokenCorpus, id: str) -> int:
    return next(i for i, r in enumerate(corpus.records) if r.id == id)


# -- the sampler ------------------------------------------------------------------------------


def test_batches_respect_the_budget_and_cover_every_item_once():
    sizes = lengths() + [5000]  # the last one cannot fit the budget on its own
    sampler = FrameBudgetBatchSampler(sizes, max_frames=1000, seed=3)
    assert sampler.skipped == [40]
    batches = list(sampler)
    assert len(batches) == len(sampler) > 1
    for batch in batches:
        assert len(batch) * max(sizes[i] for i in batch) <= 1000
    assert sorted(i for b in batches for i in b) == list(range(40))
    capped = FrameBudgetBatchSampler(sizes, max_frames=1000, max_batch_size=2)
    assert max(len(b) for b in capped) == 2
    with pytest.raises(ValueError, match="no item fits max_frames=4"):
        FrameBudgetBatchSampler([5, 6], max_frames=4)


def test_order_is_deterministic_per_seed_and_epoch():
    def epoch_batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = FrameBudgetBatchSampler(lengths(), max_frames=1000, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_batches(0, 0) == epoch_batches(0, 0)
    assert epoch_batches(0, 1) != epoch_batches(0, 0)
    assert epoch_batches(1, 0) != epoch_batches(0, 0)
    for epoch in (0, 1):
        assert sorted(i for b in epoch_batches(0, epoch) for i in b) == list(range(40))
    ordered = FrameBudgetBatchSampler(lengths(), max_frames=1000, shuffle=False)
    flat = [i for b in ordered for i in b]
    assert [lengths()[i] for i in flat] == sorted(lengths())


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_process_gets_the_same_number_of_batches(drop_last):
    sizes = lengths(50)
    n_batches = len(FrameBudgetBatchSampler(sizes, max_frames=700, num_replicas=1, rank=0))
    assert n_batches % 3  # a remainder to pad or drop
    shares = []
    for rank in range(3):
        sampler = FrameBudgetBatchSampler(sizes, max_frames=700, num_replicas=3, rank=rank, drop_last=drop_last)
        sampler.set_epoch(2)
        shares.append(list(sampler))
    assert len({len(share) for share in shares}) == 1
    assert len(shares[0]) == (n_batches // 3 if drop_last else -(-n_batches // 3))
    seen = [i for share in shares for b in share for i in b]
    if drop_last:  # disjoint shares, the remainder left out
        assert len(seen) == len(set(seen)) < len(sizes)
    else:  # every item at least once; the padding repeats whole batches
        assert set(seen) == set(range(len(sizes)))
        assert len(seen) > len(sizes)
    with pytest.raises(ValueError, match="0 <= rank < num_replicas"):
        FrameBudgetBatchSampler(sizes, max_frames=700, num_replicas=3, rank=3)


def test_resuming_continues_with_the_next_unseen_batch():
    sampler = FrameBudgetBatchSampler(lengths(), max_frames=600, seed=5)
    sampler.set_epoch(4)
    full = list(sampler)
    iterator = iter(sampler)
    seen = [next(iterator) for _ in range(3)]
    state = sampler.state_dict()
    assert (state["epoch"], state["position"]) == (4, 3)

    resumed = FrameBudgetBatchSampler(lengths(), max_frames=600, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the training loop sets the epoch again: the position stays
    assert seen + list(resumed) == full
    assert resumed.state_dict() == {**state, "epoch": 5, "position": 0}  # epoch done: next one from its start
    assert resumed.state_dict(consumed=1)["position"] == 1  # a loader that fetched ahead reports what was used

    other = FrameBudgetBatchSampler(lengths(), max_frames=600, seed=5, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="num_replicas=1, this sampler 2"):
        other.load_state_dict(state)


# -- examples and prompts ---------------------------------------------------------------------


def test_prefix_prompt_is_the_start_of_the_utterance(corpus):
    dataset = LMDataset(corpus, PromptConfig(mode="prefix", min_seconds=2, max_seconds=3, max_fraction=0.5))
    for index in range(len(corpus)):
        item, example = corpus[index], dataset[index]
        T = item.codes.shape[1]
        P = example.prompt.shape[1]
        assert example.mode == "prefix" and example.prompt_id == item.id
        assert torch.equal(torch.cat([example.prompt, example.codes], dim=1), item.codes)
        assert torch.equal(example.text, item.text)  # the text covers prompt + target
        assert P <= 0.5 * T
        if 0.5 * T >= 3 * FRAME_RATE:
            assert 2 * FRAME_RATE <= P <= 3 * FRAME_RATE


def test_speaker_prompt_comes_from_another_utterance_of_the_speaker(corpus):
    dataset = LMDataset(corpus, PromptConfig(mode="speaker", min_seconds=1, max_seconds=2))
    for index in range(len(corpus)):
        item, example = corpus[index], dataset[index]
        if item.speaker == "lonely":
            assert example.mode == "prefix"  # nobody else to take a prompt from
            continue
        assert example.mode == "speaker" and example.prompt_id != item.id
        source = corpus[index_of(corpus, example.prompt_id)]
        assert source.speaker == item.speaker
        assert torch.equal(example.codes, item.codes) and torch.equal(example.text, item.text)
        P = example.prompt.shape[1]
        assert 0 < P <= 2 * FRAME_RATE
        windows = source.codes.unfold(1, P, 1)  # [K, T - P + 1, P]: every clip of P frames
        assert any(torch.equal(windows[:, s], example.prompt) for s in range(windows.shape[1]))


def test_examples_are_deterministic_and_mixed(corpus):
    dataset = LMDataset(corpus, PromptConfig(mode="mixed", p_speaker=0.5), seed=1, n_q=2)
    first = [dataset[i] for i in range(len(dataset))]
    again = [dataset[i] for i in range(len(dataset))]
    assert all(torch.equal(a.prompt, b.prompt) and a.mode == b.mode for a, b in zip(first, again))
    assert first[0].codes.shape[0] == 2  # n_q keeps the first codebooks
    modes = set()
    changed = False
    for epoch in range(6):
        dataset.set_epoch(epoch)
        examples = [dataset[i] for i in range(len(dataset))]
        modes.update(ex.mode for ex in examples)
        changed |= any(ex.prompt.shape != f.prompt.shape for ex, f in zip(examples, first))
    assert modes == {"prefix", "speaker"} and changed
    dataset = LMDataset(corpus, PromptConfig(mode="mixed", p_speaker=0.4, p_transcribed=0.4, max_seconds=8.0), seed=1)
    assert {dataset[i].mode for i in range(len(dataset))} == {"prefix", "speaker", "transcribed"}
    with pytest.raises(ValueError, match="prompt mode must be one of"):
        PromptConfig(mode="random")
    with pytest.raises(ValueError, match="sum to at most 1"):
        PromptConfig(p_speaker=0.6, p_transcribed=0.5)


def test_lengths_bound_the_sequences(corpus):
    for prompt in (PromptConfig(mode="mixed", max_seconds=2), PromptConfig(mode="transcribed", max_seconds=8)):
        dataset = LMDataset(corpus, prompt)
        bounds = dataset.lengths()
        for epoch in range(3):
            dataset.set_epoch(epoch)
            for index in range(len(dataset)):
                ex = dataset[index]
                assert ex.text.shape[0] + ex.prompt.shape[1] + ex.codes.shape[1] <= bounds[index]


# -- collate ----------------------------------------------------------------------------------


def test_collate_pads_and_records_lengths(corpus):
    dataset = LMDataset(corpus, PromptConfig(mode="mixed"))
    examples = [dataset[i] for i in range(4)]
    batch = dataset.collate(examples)
    B, K = 4, 3
    N = max(ex.text.shape[0] for ex in examples)
    P = max(ex.prompt.shape[1] for ex in examples)
    T = max(ex.codes.shape[1] for ex in examples)
    assert batch.text.shape == (B, N) and batch.prompt.shape == (B, K, P) and batch.codes.shape == (B, K, T)
    assert batch.text.dtype == batch.prompt.dtype == batch.codes.dtype == torch.long
    assert batch.ids == [ex.id for ex in examples] and batch.speakers == [ex.speaker for ex in examples]
    pad = corpus.vocab.pad_id
    for b, ex in enumerate(examples):
        n, p, t = ex.text.shape[0], ex.prompt.shape[1], ex.codes.shape[1]
        assert batch.text_lengths[b] == n and batch.prompt_lengths[b] == p and batch.code_lengths[b] == t
        assert torch.equal(batch.text[b, :n], ex.text) and (batch.text[b, n:] == pad).all()
        assert torch.equal(batch.prompt[b, :, :p], ex.prompt) and (batch.prompt[b, :, p:] == 0).all()
        assert torch.equal(batch.codes[b, :, :t], ex.codes) and (batch.codes[b, :, t:] == 0).all()
        assert batch.text_mask[b].sum() == n and batch.code_mask[b].sum() == t and batch.prompt_mask[b].sum() == p
    moved = batch.to("cpu")
    assert isinstance(moved, LMBatch) and torch.equal(moved.codes, batch.codes) and moved.ids == batch.ids
    empty_prompts = collate([ex.__class__(**{**vars(ex), "prompt": ex.prompt[:, :0]}) for ex in examples], pad)
    assert empty_prompts.prompt.shape == (B, K, 0)


def test_a_dataloader_yields_budgeted_batches(corpus):
    dataset = LMDataset(corpus, PromptConfig(mode="mixed"))
    sampler = FrameBudgetBatchSampler(dataset.lengths(), max_frames=1500, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate)
    ids = []
    for batch in loader:
        assert isinstance(batch, LMBatch)
        longest = int((batch.text_lengths + batch.prompt_lengths + batch.code_lengths).max())  # N + P + T
        assert len(batch) * longest <= 1500
        ids += batch.ids
    assert not sampler.skipped and sorted(ids) == sorted(r.id for r in corpus.records)
