import pytest
import torch

from lm.sampling import SamplingConfig, repetition_share, sample_next, top_k_filter, top_p_filter


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 1.0]])
    kept = top_k_filter(logits, 2).isfinite()
    assert kept.tolist() == [[False, True, True, False], [False, False, True, True]]
    assert torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs.log(), 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = top_p_filter(probs.log(), 0.1).isfinite()
    assert kept.tolist() == [[True, False, False, False]]  # never empty
    assert torch.equal(top_p_filter(probs.log(), 1.0), probs.log())


def test_greedy_and_seeded_sampling_are_reproducible():
    logits = torch.randn(4, 50)
    history = torch.empty(4, 0, dtype=torch.long)
    assert torch.equal(sample_next(logits, history, SamplingConfig(temperature=0)), logits.argmax(-1))
    config = SamplingConfig(temperature=1.0, top_k=10)
    first = sample_next(logits, history, config, torch.Generator().manual_seed(3))
    again = sample_next(logits, history, config, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert all(int(t) in logits[b].topk(10).indices.tolist() for b, t in enumerate(first))


def test_repetition_aware_sampling_breaks_a_forced_loop():
    # A distribution whose top-1 nucleus always writes token 7: truncated sampling loops forever.
    logits = torch.full((1, 16), 0.0)
    logits[0, 7] = 3.0
    generator = torch.Generator().manual_seed(0)
    looping = SamplingConfig(temperature=1.0, top_p=0.2, repetition_threshold=0.0)
    aware = SamplingConfig(temperature=1.0, top_p=0.2, repetition_window=10, repetition_threshold=0.5)

    def run(config: SamplingConfig) -> list[int]:
        history = torch.empty(1, 0, dtype=torch.long)
        for _ in range(60):
            token = sample_next(logits, history, config, generator)
            history = torch.cat([history, token[:, None]], dim=1)
        return history[0].tolist()

    assert set(run(looping)) == {7}
    tokens = run(aware)
    assert len(set(tokens)) > 3
    # Never more than the window allows in a row before a full-distribution draw can break it.
    longest, current = 0, 0
    for a, b in zip(tokens, tokens[1:]):
        current = current + 1 if a == b == 7 else 0
        longest = max(longest, current)
    assert longest < 40


def test_repetition_share():
    history = torch.tensor([[1, 2, 2, 2], [3, 3, 3, 3]])
    share = repetition_share(history, torch.tensor([2, 4]), window=4)
    assert share.tolist() == [0.75, 0.0]


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)
