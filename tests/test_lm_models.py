import json

import pytest
import torch
import torch.nn.functional as F

from codec.interface import CodecIdentity
from lm.ar import ARConfig, ARModel
from lm.layout import Layout
from lm.losses import IGNORE
from lm.nar import NARConfig, NARModel
from lm.pretrained import text_vocab_identity
from lm.transformer import Transformer

V, C, K = 24, 16, 4  # text vocabulary, codebook entries, codebooks
CODEC = CodecIdentity(name="echo", config_hash="0123456789abcdef", sample_rate=16000, frame_rate=50.0,
                      n_q=K, codebook_size=C)
TINY = dict(text_vocab_size=V, codebook_size=C, n_q=K, d_model=32, n_heads=4, n_layers=2, ffn_dim=64, dropout=0.0)


def ar(**changes) -> ARModel:
    torch.manual_seed(0)
    return ARModel(ARConfig(**{**TINY, **changes})).eval()


def nar(**changes) -> NARModel:
    torch.manual_seed(0)
    return NARModel(NARConfig(**{**TINY, **changes})).eval()


def batch(seed: int = 0, pad: int = 0) -> dict[str, torch.Tensor]:
    """Three items of different text, prompt and target lengths (one without a prompt); pads hold `pad`."""
    g = torch.Generator().manual_seed(seed)
    text_lengths, prompt_lengths, code_lengths = torch.tensor([9, 5, 7]), torch.tensor([6, 0, 3]), torch.tensor([8, 5, 3])
    text = torch.randint(4, V, (3, 9), generator=g)
    prompt = torch.randint(0, C, (3, K, 6), generator=g)
    codes = torch.randint(0, C, (3, K, 8), generator=g)
    for b in range(3):
        text[b, text_lengths[b]:] = pad
        prompt[b, :, prompt_lengths[b]:] = pad
        codes[b, :, code_lengths[b]:] = pad
    return dict(text=text, text_lengths=text_lengths, prompt=prompt, prompt_lengths=prompt_lengths,
                codes=codes, code_lengths=code_lengths)


# -- shapes and configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("ffn", ["gelu", "swiglu"])
def test_shapes(ffn):
    x = batch()
    out = ar(ffn=ffn)(**x)
    assert out.logits.shape == (3, 8 + 1, C + 1)
    assert out.loss.dim() == 0 and 0 <= out.top1 <= out.top10 <= 1
    assert out.n_tokens == int((x["code_lengths"] + 1).sum())  # target frames + EOS, no prompt frames
    out = nar(ffn=ffn)(**x, stage=torch.tensor([2, 3, 4]))
    assert out.logits.shape == (3, 8, C)
    assert out.n_tokens == int(x["code_lengths"].sum())
    # codebook 1 alone is enough for the AR; a batch without any prompt works for both
    empty = torch.zeros(3, 0, 0, dtype=torch.long)
    assert ar()(x["text"], x["text_lengths"], empty, torch.zeros(3, dtype=torch.long), x["codes"][:, :1],
                x["code_lengths"]).logits.shape == (3, 9, C + 1)
    assert nar().predict(x["text"], x["text_lengths"], empty, torch.zeros(3, dtype=torch.long), x["codes"][:, :2],
                         x["code_lengths"], 3).shape == (3, 8, C)


def test_special_ids_and_base_sizes():
    config = ARConfig(**TINY)
    assert (config.eos_id, config.bos_id, config.pad_id, config.n_output_tokens) == (C, C + 1, C + 2, C + 1)
    assert list(NARConfig(**TINY).stages) == [2, 3, 4]
    with torch.device("meta"):  # the paper's size: built for its shapes, without memory
        base = dict(text_vocab_size=100, codebook_size=1024, n_q=8)
        assert 150e6 < ARModel(ARConfig(**base)).num_parameters() < 160e6
        assert 210e6 < NARModel(NARConfig(**base)).num_parameters() < 230e6
        cpu = dict(base, d_model=256, n_heads=4, n_layers=6, ffn_dim=1024)
        assert 4e6 < ARModel(ARConfig(**cpu)).num_parameters() < 7e6


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        ARConfig(**{**TINY, "n_heads": 5})
    with pytest.raises(ValueError, match="text_pad_id"):
        ARConfig(**{**TINY, "text_pad_id": V})
    with pytest.raises(ValueError, match="ffn must be one of"):
        ARConfig(**{**TINY, "ffn": "relu"})
    with pytest.raises(ValueError, match="n_q must be at least 2 for the NAR"):
        NARConfig(**{**TINY, "n_q": 1})
    with pytest.raises(ValueError, match="differs from the codec's"):
        ARConfig(**{**TINY, "codebook_size": 32, "codec": CODEC})
    with pytest.raises(ValueError, match=r"unknown ARConfig field\(s\) \['n_codebooks'\]"):
        ARConfig.from_dict({**TINY, "n_codebooks": 4})
    assert ARConfig(**TINY, codec=CODEC).codec_identity == CODEC


# -- the AR's attention mask -----------------------------------------------------------------------


def test_ar_is_causal_over_audio_and_sees_the_text():
    model, x = ar(), batch()
    base = model(**x).logits
    later = {k: v.clone() for k, v in x.items()}
    later["codes"][:, 0, 4] = (later["codes"][:, 0, 4] + 1) % C  # target token 4 is the input of position 5
    changed = model(**later).logits
    torch.testing.assert_close(changed[:, :5], base[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(changed[0, 5:], base[0, 5:])
    other_text = {k: v.clone() for k, v in x.items()}
    other_text["text"][:, 1] = (other_text["text"][:, 1] + 1 - 4) % (V - 4) + 4
    assert not torch.allclose(model(**other_text).logits[:, 0], base[:, 0])
    other_prompt = {k: v.clone() for k, v in x.items()}
    other_prompt["prompt"][0, 0, 0] = (other_prompt["prompt"][0, 0, 0] + 1) % C
    assert not torch.allclose(model(**other_prompt).logits[0, 0], base[0, 0])


def test_ar_text_does_not_see_audio():
    mask = Layout.build(torch.tensor([3]), 4, [(torch.tensor([2]), 2), (torch.tensor([3]), 3)]).attention_mask(True)[0, 0]
    assert not mask[:3, 4:].any()  # text queries -> audio keys
    assert mask[4:, :3].all() and not mask[4:, 3].any()  # audio sees real text, not the text pad
    assert mask[6, 4] and mask[6, 5] and mask[6, 6] and not mask[6, 7]  # BOS sees the prompt and itself only


@pytest.mark.parametrize("model_fn", [ar, nar])
def test_padded_positions_change_nothing(model_fn):
    model = model_fn()
    kwargs = {} if model_fn is ar else {"stage": torch.tensor([2, 4, 3])}
    a = model(**batch(pad=0), **kwargs)
    b = model(**batch(pad=C + 5), **kwargs)  # out-of-range values in the pads are never read
    keep = a.logits.new_zeros(a.logits.shape[:2], dtype=torch.bool)
    for i, n in enumerate(batch()["code_lengths"].tolist()):
        keep[i, : n + (model_fn is ar)] = True
    torch.testing.assert_close(a.logits[keep], b.logits[keep], rtol=0, atol=1e-6)
    torch.testing.assert_close(a.loss, b.loss)


@pytest.mark.parametrize("model_fn", [ar, nar])
def test_prompt_frames_carry_no_loss(model_fn):
    model, x = model_fn(), batch()
    kwargs = {} if model_fn is ar else {"stage": 3}
    out = model(**x, **kwargs)
    T = x["codes"].shape[2]
    if model_fn is ar:  # labels: the target's codebook 1, then EOS
        labels = torch.full((3, T + 1), IGNORE)
        for b, n in enumerate(x["code_lengths"].tolist()):
            labels[b, :n], labels[b, n] = x["codes"][b, 0, :n], C
    else:  # labels: the target's codebook 3
        labels = x["codes"][:, 2].masked_fill(torch.arange(T) >= x["code_lengths"][:, None], IGNORE)
    expected = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    torch.testing.assert_close(out.loss, expected)


# -- the NAR's conditioning ----------------------------------------------------------------------


def test_nar_stage_embedding_changes_the_output():
    model, x = nar(tie_output_embeddings=True), batch()
    before2, before3 = model.predict(**x, stage=2), model.predict(**x, stage=3)
    with torch.no_grad():
        model.stage_embedding.weight[0] += 1.0  # stage 2's row
    assert not torch.allclose(model.predict(**x, stage=2), before2)
    torch.testing.assert_close(model.predict(**x, stage=3), before3, rtol=0, atol=0)


def test_nar_reads_only_codebooks_below_j():
    model, x = nar(), batch()
    for j in (2, 3, 4):
        base = model.predict(**x, stage=j)
        upper = {**x, "codes": x["codes"].clone()}
        upper["codes"][:, j - 1:] = (upper["codes"][:, j - 1:] + 1) % C  # codebooks j..K
        torch.testing.assert_close(model.predict(**upper, stage=j), base, rtol=0, atol=0)
        lower = {**x, "codes": x["codes"].clone()}
        lower["codes"][:, j - 2] = (lower["codes"][:, j - 2] + 1) % C  # codebook j - 1
        assert not torch.allclose(model.predict(**lower, stage=j), base)
        # inference passes only codebooks 1..j-1
        torch.testing.assert_close(model.predict(**{**x, "codes": x["codes"][:, : j - 1]}, stage=j), base)


def test_nar_stage_per_item_equals_one_stage_per_batch():
    model, x = nar(), batch()
    stage = torch.tensor([4, 2, 3])
    mixed = model(**x, stage=stage)
    for b, j in enumerate(stage.tolist()):
        torch.testing.assert_close(mixed.logits[b], model(**x, stage=j).logits[b], rtol=1e-5, atol=1e-5)


# -- learning ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn", [ar, nar])
def test_loss_falls_on_a_fixed_batch(model_fn):
    model, x = model_fn(), batch()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        kwargs = {} if model_fn is ar else {"stage": torch.tensor([2, 3, 4]).roll(step)}
        loss = model(**x, **kwargs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("adaptive", [False, True])
def test_keep_computes_only_the_positions_read(adaptive):
    """`keep` (the NAR's target frames, the AR's BOS at prefill) gives the full output's rows."""
    torch.manual_seed(0)
    net = Transformer(32, 4, 3, 64, adaptive=adaptive).eval()
    x = torch.randn(2, 11, 32)
    mask = (torch.rand(2, 1, 11, 11) < 0.7) | torch.eye(11, dtype=torch.bool)
    cond = torch.randn(2, 32) if adaptive else None
    full = net(x, mask, cond)
    for keep in (slice(7, None), slice(-1, None), slice(2, 5)):
        torch.testing.assert_close(net(x, mask, cond, keep=keep), full[:, keep], rtol=1e-5, atol=1e-5)


def test_attention_dropout_is_its_own_setting():
    """`dropout` drops the branches' outputs only, so scaled_dot_product_attention keeps its fused kernel
    on a CPU; `attention_dropout` (the long recipe's) drops attention probabilities, in training only."""
    torch.manual_seed(0)
    x = torch.randn(2, 11, 32)
    mask = torch.ones(2, 1, 11, 11, dtype=torch.bool).tril()
    block = Transformer(32, 4, 1, 64, dropout=0.5).blocks[0].train()
    attention = block.attention(block.attention_norm(x, None), mask)
    torch.testing.assert_close(block.attention(block.attention_norm(x, None), mask), attention)  # nothing random
    assert not torch.equal(block(x, mask), block(x, mask))  # the branches' dropout is on

    block = Transformer(32, 4, 1, 64, attention_dropout=0.5).blocks[0].train()
    normed = block.attention_norm(x, None)
    assert not torch.equal(block.attention(normed, mask), block.attention(normed, mask))
    block.eval()
    torch.testing.assert_close(block.attention(normed, mask), block.attention(normed, mask), rtol=0, atol=0)
    for model in (ar(attention_dropout=0.25), nar(attention_dropout=0.25)):  # the config reaches every block
        assert {block.attention.dropout for block in model.transformer.blocks} == {0.25}
    with pytest.raises(ValueError, match=r"attention_dropout is a probability in \[0, 1\), got 1.0"):
        ARConfig(attention_dropout=1.0)


# -- the KV cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reserve", [0, 16])
def test_kv_cache_equals_the_full_forward(reserve):
    model, x = ar(ffn="swiglu"), batch()
    full = model(**x).logits  # [B, T + 1, C + 1]
    with torch.no_grad():
        logits, cache = model.prefill(x["text"], x["text_lengths"], x["prompt"], x["prompt_lengths"], max_new_tokens=reserve)
        torch.testing.assert_close(logits, full[:, 0], rtol=1e-5, atol=1e-5)
        for t in range(x["codes"].shape[2]):  # teacher forcing; items past their end get EOS
            tokens = torch.where(t < x["code_lengths"], x["codes"][:, 0, t], C)
            logits, cache = model.step(tokens, cache)
            real = t < x["code_lengths"]
            torch.testing.assert_close(logits[real], full[real, t + 1], rtol=1e-5, atol=1e-5)
    assert cache.length == 9 + 6 + 1 + 8


def test_kv_cache_select_keeps_items():
    model, x = ar(), batch()
    full = model(**x).logits
    with torch.no_grad():
        _, cache = model.prefill(x["text"], x["text_lengths"], x["prompt"], x["prompt_lengths"])
        _, cache = model.step(x["codes"][:, 0, 0], cache)
        cache.select(torch.tensor([2, 0]))
        logits, _ = model.step(x["codes"][[2, 0], 0, 1], cache)
    torch.testing.assert_close(logits, full[[2, 0], 2], rtol=1e-5, atol=1e-5)


# -- save and load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn", [ar, nar])
def test_save_load_round_trip(model_fn, tmp_path):
    vocab = text_vocab_identity({"kind": "phoneme", "size": V, "symbols": list("abc")})
    model = model_fn(codec=CODEC.to_dict(), text_vocab=vocab, **({} if model_fn is ar else {"tie_output_embeddings": True}))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == ("echo_ar" if model_fn is ar else "echo_nar")
    loaded = type(model).from_pretrained(tmp_path, expect_codec=CODEC, expect_text_vocab=vocab)
    kwargs = {} if model_fn is ar else {"stage": torch.tensor([2, 3, 4])}
    assert torch.equal(loaded(**batch(), **kwargs).logits, model(**batch(), **kwargs).logits)
    assert loaded.config == model.config and not loaded.training


def test_load_checks_codec_vocab_and_model_type(tmp_path):
    ar(codec=CODEC, text_vocab="phoneme-24-abc").save_pretrained(tmp_path / "ar")
    other = CodecIdentity(**{**CODEC.to_dict(), "config_hash": "fedcba9876543210"})
    with pytest.raises(ValueError, match="different codec.*config_hash"):
        ARModel.from_pretrained(tmp_path / "ar", expect_codec=other)
    with pytest.raises(ValueError, match="text vocabulary 'phoneme-24-abc'"):
        ARModel.from_pretrained(tmp_path / "ar", expect_text_vocab="phoneme-24-xyz")
    with pytest.raises(ValueError, match="'echo_ar' model; NARModel loads 'echo_nar'"):
        NARModel.from_pretrained(tmp_path / "ar")
    ar().save_pretrained(tmp_path / "unknown")
    with pytest.raises(ValueError, match="does not record which codec"):
        ARModel.from_pretrained(tmp_path / "unknown", expect_codec=CODEC)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ARModel.from_pretrained(tmp_path / "missing")


def test_load_from_a_hub_id(tmp_path, monkeypatch):
    import huggingface_hub

    nar().save_pretrained(tmp_path)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(repo) or str(tmp_path))
    assert isinstance(NARModel.from_pretrained("someone/echo-nar"), NARModel) and asked == ["someone/echo-nar"]


def test_load_refuses_unknown_fields_and_mismatched_weights(tmp_path):
    ar().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_codebooks": 4}))
    with pytest.raises(ValueError, match=r"unknown ARConfig field\(s\) \['n_codebooks'\] in .*config.json; "
                                         r"known: \['attention_dropout', 'codebook_size', 'codec', 'd_model'"):
        ARModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(ValueError, match=r"model.safetensors does not match its config: missing \['transformer.blocks.2"):
        ARModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ARModel.from_pretrained("./someone/echo-ar")  # looks local: never a download


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_a_clear_error():
    model, x = ar(), batch()
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        model(**{**x, "codes": x["codes"].masked_fill(x["codes"] == x["codes"][0, 0, 0], C)})
    with pytest.raises(ValueError, match=r"text must lie in \[0, 24\)"):
        model(**{**x, "text": x["text"] + V})
    with pytest.raises(ValueError, match="batch sizes differ: text has 3, .*codes has 2"):
        model(**{**x, "codes": x["codes"][:2]})
    with pytest.raises(ValueError, match=r"code_lengths must lie in \[1, 8\]"):
        model(**{**x, "code_lengths": torch.tensor([9, 5, 3])})
    with pytest.raises(ValueError, match=r"text must have shape \[B, N\]"):
        model(**{**x, "text": x["text"][0]})
    with torch.no_grad():
        _, cache = model.prefill(x["text"], x["text_lengths"], x["prompt"], x["prompt_lengths"])
        with pytest.raises(ValueError, match=r"tokens must lie in \[0, 16\]"):
            model.step(torch.tensor([0, C + 1, 0]), cache)
    with pytest.raises(ValueError, match="stage j must lie in 2..4"):
        nar()(**x, stage=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="prompt has 2 codebooks; this model reads 4"):
        nar()(**{**x, "prompt": x["prompt"][:, :2]}, stage=2)
    with pytest.raises(ValueError, match="codes has 2 codebooks; this needs at least 3"):
        nar()(**{**x, "codes": x["codes"][:, :2]}, stage=3)
