import pytest
import torch

from codec.interface import CodecIdentity
from lm.ar import ARConfig, ARModel
from lm.generation import ARResult, cfg_scale_for, generate_ar, generate_nar, iter_ar, length_limits
from lm.nar import NARConfig, NARModel
from lm.sampling import DEFAULT_CFG_SCALE, SamplingConfig, guide

V, C, K = 24, 16, 4  # text vocabulary, codebook entries, codebooks
EOS = C
TINY = dict(text_vocab_size=V, codebook_size=C, n_q=K, d_model=32, n_heads=2, n_layers=2, ffn_dim=64, dropout=0.0)
GREEDY = SamplingConfig(temperature=0.0)
RANDOM = SamplingConfig(temperature=1.0, repetition_threshold=0.0)  # plain sampling from the whole distribution


pytestmark = pytest.mark.usefixtures("one_thread")  # hundreds of one-token steps: see conftest


def ar(seed: int = 0, **changes) -> ARModel:
    torch.manual_seed(seed)
    return ARModel(ARConfig(**{**TINY, **changes})).eval()


def nar(seed: int = 0) -> NARModel:
    torch.manual_seed(seed)
    return NARModel(NARConfig(**TINY)).eval()


def bias_logits(model: ARModel, bias: torch.Tensor) -> ARModel:
    """Add bias [C + 1] to every logit the model outputs (e.g. -inf on EOS)."""
    model.head.register_forward_hook(lambda module, inputs, output: output + bias)
    return model


def bias_on(token: int, value: float) -> torch.Tensor:
    bias = torch.zeros(C + 1)
    bias[token] = value
    return bias


def inputs(seed: int = 0, pad: int = 3) -> dict[str, torch.Tensor]:
    """Three items of different text and prompt lengths (one without a prompt); pads hold `pad`."""
    g = torch.Generator().manual_seed(seed)
    text_lengths, prompt_lengths = torch.tensor([9, 4, 6]), torch.tensor([5, 0, 7])
    text = torch.randint(4, V, (3, 9), generator=g)
    prompt = torch.randint(0, C, (3, K, 7), generator=g)
    for b in range(3):
        text[b, text_lengths[b]:] = pad
        prompt[b, :, prompt_lengths[b]:] = pad
    return dict(text=text, text_lengths=text_lengths, prompt=prompt, prompt_lengths=prompt_lengths)


def item(x: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    """Item b alone, without any padding."""
    N, P = int(x["text_lengths"][b]), int(x["prompt_lengths"][b])
    return dict(text=x["text"][b:b + 1, :N], text_lengths=x["text_lengths"][b:b + 1],
                prompt=x["prompt"][b:b + 1, :, :P], prompt_lengths=x["prompt_lengths"][b:b + 1])


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def assert_same(a: ARResult, b: ARResult) -> None:
    assert torch.equal(a.lengths, b.lengths) and torch.equal(a.finished, b.finished)
    assert torch.equal(a.codes, b.codes)
    torch.testing.assert_close(a.logprob, b.logprob, rtol=0, atol=1e-4)


# -- the KV cache -----------------------------------------------------------------------------------


def test_cache_equals_full_forward_greedy():
    model, x = ar(), inputs()
    limits = dict(max_new_tokens=torch.tensor([12, 5, 9]), sampling=GREEDY, return_logits=True)
    cached = generate_ar(model, **x, **limits)
    full = generate_ar(model, **x, **limits, use_cache=False)
    assert_same(cached, full)
    torch.testing.assert_close(cached.logits, full.logits, rtol=0, atol=1e-5)
    assert cached.lengths.tolist() == [12, 5, 9] and not cached.finished.any()  # a random model rarely picks EOS
    assert cached.codes.shape == (3, 12) and cached.logits.shape == (3, 12, C + 1)


def test_cache_equals_full_forward_sampling():
    # At temperature 1 the random model writes EOS now and then, so items leave the batch at different steps.
    model, x = ar(), inputs()
    runs = [generate_ar(model, **x, sampling=RANDOM, max_new_tokens=30, generator=seeded(1, 2, 3), use_cache=use_cache,
                        return_logits=True) for use_cache in (True, False)]
    assert_same(*runs)
    torch.testing.assert_close(runs[0].logits, runs[1].logits, rtol=0, atol=1e-5)
    assert runs[0].finished.any()


def test_iter_ar_shows_each_frame_as_it_is_written_and_ends_with_generate_ars_result():
    model, x = ar(), inputs()
    options = dict(sampling=RANDOM, max_new_tokens=30)
    loop = iter_ar(model, **x, **options, generator=seeded(1, 2, 3))
    seen = []
    while True:
        try:
            progress = next(loop)
        except StopIteration as stop:
            result = stop.value
            break
        seen.append((progress.lengths.clone(), progress.codes.clone()))
    assert_same(result, generate_ar(model, **x, **options, generator=seeded(1, 2, 3)))
    for step, (lengths, codes) in enumerate(seen):  # frames never change once written
        assert (lengths <= step + 1).all()
        for b in range(3):
            n = int(lengths[b])
            assert torch.equal(codes[b, :n], result.codes[b, :n])
    assert len(seen) == int((result.lengths + result.finished).max())


# -- stopping -----------------------------------------------------------------------------------------


def test_generation_stops_at_the_maximum_without_eos():
    model, x = bias_logits(ar(), bias_on(EOS, float("-inf"))), inputs()
    out = generate_ar(model, **x, sampling=RANDOM, max_new_tokens=torch.tensor([7, 3, 11]), generator=seeded(0, 1, 2))
    assert out.lengths.tolist() == [7, 3, 11]
    assert out.finished.tolist() == [False, False, False]
    assert out.codes.shape == (3, 11)
    assert (out.codes[1, 3:] == 0).all() and (out.codes[0, 7:] == 0).all()
    assert out.logprob.isfinite().all() and (out.logprob < 0).all()


def test_minimum_length_is_honoured():
    model, x = bias_logits(ar(), bias_on(EOS, 30.0)), inputs()  # EOS is by far the most likely token
    out = generate_ar(model, **x, sampling=RANDOM, max_new_tokens=20, generator=seeded(0, 1, 2))
    assert out.lengths.tolist() == [0, 0, 0] and out.finished.all() and out.codes.shape == (3, 0)
    out = generate_ar(model, **x, sampling=RANDOM, min_new_tokens=torch.tensor([4, 7, 2]), max_new_tokens=20,
                      generator=seeded(0, 1, 2))
    assert out.lengths.tolist() == [4, 7, 2] and out.finished.all()
    assert (out.codes < C).all()
    # The score is under the model's own distribution: the forced frames, where EOS was masked, cost a lot.
    assert (out.logprob < -25 * out.lengths).all()
    torch.testing.assert_close(out.mean_logprob, out.logprob / (out.lengths + 1))


def test_default_maximum_comes_from_the_codec_frame_rate():
    codec = CodecIdentity(name="echo", config_hash="0" * 16, sample_rate=16000, frame_rate=10.0, n_q=K, codebook_size=C)
    model, x = bias_logits(ar(codec=codec), bias_on(EOS, float("-inf"))), inputs()
    out = generate_ar(model, **x, sampling=RANDOM, generator=seeded(0, 1, 2))
    assert torch.equal(out.lengths, length_limits(x["text_lengths"], 10.0)[1]) and not out.finished.any()
    with pytest.raises(ValueError, match="max_new_tokens is needed"):
        generate_ar(ar(), **x)


def test_length_limits():
    low, high = length_limits(torch.tensor([1, 60, 200]), frame_rate=50.0)
    # 60 tokens x 0.06 s x 50 Hz = 180 frames: max 3 x 180 + 1 s = 590, min 0.3 x 180 = 54
    assert high.tolist()[1] == 590 and low.tolist()[1] == 54
    assert (low < high).all() and (low >= 0).all() and (high[1:] > high[:-1]).all()
    low2, high2 = length_limits(torch.tensor([70]), 50.0, prompt_text_lengths=torch.tensor([10]))
    assert (low2.item(), high2.item()) == (54, 590)  # only the new text counts


# -- reproducibility ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [GREEDY, RANDOM, SamplingConfig(temperature=0.8, top_k=5, top_p=0.9)])
def test_batched_equals_unbatched(sampling):
    model, x = ar(), inputs()
    seeds = (11, 12, 13)
    batched = generate_ar(model, **x, sampling=sampling, max_new_tokens=25, generator=seeded(*seeds),
                          return_logits=True)
    for b, seed in enumerate(seeds):
        alone = generate_ar(model, **item(x, b), sampling=sampling, max_new_tokens=25, generator=seeded(seed),
                            return_logits=True)
        n = int(alone.lengths[0])
        assert batched.lengths[b] == n and batched.finished[b] == alone.finished[0]
        assert torch.equal(batched.codes[b, :n], alone.codes[0, :n])
        steps = alone.logits.shape[1]
        torch.testing.assert_close(batched.logits[b, :steps], alone.logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batched.logprob[b], alone.logprob[0], rtol=0, atol=1e-4)


def test_pad_values_do_not_matter():
    model = ar()
    first = generate_ar(model, **inputs(pad=0), sampling=RANDOM, max_new_tokens=20, generator=seeded(4, 5, 6))
    again = generate_ar(model, **inputs(pad=9), sampling=RANDOM, max_new_tokens=20, generator=seeded(4, 5, 6))
    assert_same(first, again)


def test_same_seed_same_output_other_seed_other_output():
    model, x = bias_logits(ar(), bias_on(EOS, float("-inf"))), inputs()

    def run(generator):
        return generate_ar(model, **x, sampling=RANDOM, max_new_tokens=20, generator=generator)

    assert_same(run(seeded(1, 2, 3)), run(seeded(1, 2, 3)))
    assert not torch.equal(run(seeded(1, 2, 3)).codes, run(seeded(4, 5, 6)).codes)
    # one generator for the whole batch is reproducible too
    assert_same(run(torch.Generator().manual_seed(7)), run(torch.Generator().manual_seed(7)))


def test_repetition_aware_sampling_breaks_a_loop():
    bias = bias_on(EOS, float("-inf"))
    bias[7] = 4.0  # token 7 holds most of the mass (~0.8): top-p 0.5 sampling writes it forever
    model, x = bias_logits(ar(), bias), inputs()
    looping = SamplingConfig(temperature=1.0, top_p=0.5, repetition_threshold=0.0)
    aware = SamplingConfig(temperature=1.0, top_p=0.5, repetition_window=10, repetition_threshold=0.5)
    out = generate_ar(model, **x, sampling=looping, max_new_tokens=60, generator=seeded(0, 1, 2))
    assert (out.codes == 7).all()
    out = generate_ar(model, **x, sampling=aware, max_new_tokens=60, generator=seeded(0, 1, 2))
    for b in range(3):
        assert len(set(out.codes[b].tolist())) > 1  # the loop is broken in every item


def test_bad_arguments():
    model, x = ar(), inputs()
    with pytest.raises(ValueError, match="min_new_tokens"):
        generate_ar(model, **x, max_new_tokens=5, min_new_tokens=6)
    with pytest.raises(ValueError, match="at least 1"):
        generate_ar(model, **x, max_new_tokens=0)
    with pytest.raises(ValueError, match="one per item"):
        generate_ar(model, **x, max_new_tokens=5, generator=seeded(1, 2))
    with pytest.raises(ValueError, match="eval mode"):
        generate_ar(ar().train(), **x, max_new_tokens=5)


# -- classifier-free guidance ----------------------------------------------------------------------------


def test_text_dropout_hides_the_text_of_some_training_items():
    model, x = ar(text_dropout=0.5), inputs()
    codes = torch.randint(0, C, (3, K, 6), generator=torch.Generator().manual_seed(1))
    batch = (*x.values(), codes, torch.tensor([6, 3, 5]))
    torch.manual_seed(2)
    trained = model.train()(*batch).logits  # dropout is 0: only the text differs between the two modes
    model.eval()
    plain = model(*batch).logits
    hidden = model(model.hide_text(x["text"]), *batch[1:]).logits
    same = [torch.allclose(trained[b], plain[b], atol=1e-5) for b in range(3)]
    without = [torch.allclose(trained[b], hidden[b], atol=1e-5) for b in range(3)]
    assert all(s != w for s, w in zip(same, without)) and any(same) and any(without)
    with pytest.raises(ValueError, match="text_dropout"):
        ARConfig(**TINY, text_dropout=1.0)


def test_guided_generation_samples_from_the_guided_logits():
    model, x = ar(text_dropout=0.1), inputs()
    guided = generate_ar(model, **x, sampling=SamplingConfig(temperature=0.0, cfg_scale=3.0),
                         max_new_tokens=torch.tensor([9, 4, 7]), return_logits=True)
    for b in range(3):  # the same codes through two full forwards, with and without the text
        one = item(x, b)
        n = int(guided.lengths[b])
        written = guided.codes[b:b + 1, :n][:, None].expand(1, K, n)
        steps = n + int(guided.finished[b])
        both = [model(text, one["text_lengths"], one["prompt"], one["prompt_lengths"], written, torch.tensor([n]))
                .logits[0, :steps] for text in (one["text"], model.hide_text(one["text"]))]
        expected = guide(*both, 3.0)
        torch.testing.assert_close(guided.logits[b, :steps], expected, rtol=0, atol=1e-4)
        assert torch.equal(expected[:n].argmax(-1), guided.codes[b, :n])
    plain = generate_ar(model, **x, sampling=GREEDY, max_new_tokens=torch.tensor([9, 4, 7]))
    assert not torch.equal(plain.codes, guided.codes)


@pytest.mark.parametrize("sampling", [GREEDY, RANDOM])
def test_guided_generation_batched_equals_unbatched(sampling):
    model, x = ar(text_dropout=0.1), inputs()
    sampling = SamplingConfig(**{**vars(sampling), "cfg_scale": 2.0})
    batched = generate_ar(model, **x, sampling=sampling, max_new_tokens=25, generator=seeded(11, 12, 13))
    for b, seed in enumerate((11, 12, 13)):
        alone = generate_ar(model, **item(x, b), sampling=sampling, max_new_tokens=25, generator=seeded(seed))
        n = int(alone.lengths[0])
        assert batched.lengths[b] == n and torch.equal(batched.codes[b, :n], alone.codes[0, :n])


def test_the_default_guidance_is_the_models_own():
    plain, trained = ar(), ar(text_dropout=0.1)
    assert cfg_scale_for(plain, SamplingConfig()) == 1.0 and cfg_scale_for(trained, SamplingConfig()) == DEFAULT_CFG_SCALE
    assert cfg_scale_for(trained, SamplingConfig(cfg_scale=1.0)) == 1.0
    x = inputs()
    default = generate_ar(trained, **x, max_new_tokens=12, sampling=SamplingConfig(temperature=0.0))
    explicit = generate_ar(trained, **x, max_new_tokens=12,
                           sampling=SamplingConfig(temperature=0.0, cfg_scale=DEFAULT_CFG_SCALE))
    assert_same(default, explicit)


def test_guidance_needs_a_model_trained_for_it():
    x = inputs()
    with pytest.raises(ValueError, match="text_dropout"):
        generate_ar(ar(), **x, max_new_tokens=5, sampling=SamplingConfig(cfg_scale=2.0))
    with pytest.raises(ValueError, match="KV cache"):
        generate_ar(ar(text_dropout=0.1), **x, max_new_tokens=5, sampling=SamplingConfig(cfg_scale=2.0),
                    use_cache=False)
    with pytest.raises(ValueError, match="cfg_scale"):
        SamplingConfig(cfg_scale=0.5)


# -- the NAR loop ---------------------------------------------------------------------------------------


def test_generate_nar_fills_the_other_codebooks():
    model, x = nar(), inputs()
    lengths = torch.tensor([6, 2, 0])
    codes1 = torch.randint(0, C, (3, 6), generator=torch.Generator().manual_seed(0))
    codes1[1, 2:] = 0
    codes = generate_nar(model, **x, codes1=codes1, lengths=lengths)
    assert codes.shape == (3, K, 6) and codes.dtype == torch.long
    assert torch.equal(codes[:, 0], codes1)
    assert ((codes >= 0) & (codes < C)).all()
    assert (codes[1, 1:, 2:] == 0).all() and (codes[2, 1:] == 0).all()  # nothing after an item's end
    assert torch.equal(generate_nar(model, **x, codes1=codes1[:, None], lengths=lengths), codes)  # greedy: same again
    # an item's codes do not depend on the rest of the batch
    alone = generate_nar(model, **item(x, 0), codes1=codes1[:1], lengths=lengths[:1])
    assert torch.equal(alone[0], codes[0])


def test_generate_nar_returns_the_distributions_it_chose_from():
    model, x = nar(), inputs()
    lengths = torch.tensor([6, 3, 6])
    codes1 = torch.randint(0, C, (3, 6), generator=torch.Generator().manual_seed(2))
    codes, probabilities = generate_nar(model, **x, codes1=codes1, lengths=lengths, return_probabilities=True)
    assert torch.equal(codes, generate_nar(model, **x, codes1=codes1, lengths=lengths))
    assert probabilities.shape == (3, K, 6, C) and probabilities.dtype == torch.float32
    assert torch.allclose(probabilities.sum(-1), torch.ones(3, K, 6))
    assert torch.equal(probabilities[:, 0], torch.nn.functional.one_hot(codes1, C).float())  # codebook 1 as given
    real = torch.arange(6) < lengths[:, None]  # [B, T]
    assert torch.equal(probabilities[:, 1:].argmax(-1)[real[:, None].expand(-1, K - 1, -1)],
                       codes[:, 1:][real[:, None].expand(-1, K - 1, -1)])  # greedy: the most likely code


def test_generate_nar_sampling_is_seeded():
    model, x = nar(), inputs()
    codes1, lengths = torch.randint(0, C, (3, 5), generator=torch.Generator().manual_seed(1)), torch.tensor([5, 5, 3])

    def run(generator):
        return generate_nar(model, **x, codes1=codes1, lengths=lengths, temperature=1.0, generator=generator)

    first = run(seeded(1, 2, 3))
    assert torch.equal(first, run(seeded(1, 2, 3)))
    assert torch.equal(first[:, 0], codes1)
    assert not torch.equal(first, run(seeded(4, 5, 6)))
    assert torch.equal(run(torch.Generator().manual_seed(0)), run(torch.Generator().manual_seed(0)))
