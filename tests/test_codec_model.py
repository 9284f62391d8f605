import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from codec.loading import load_codec
from codec.losses import multiscale_mel_loss
from codec.model import CodecConfig, EchoCodec

PRESETS = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "codec"


def preset(name: str) -> CodecConfig:
    return CodecConfig(**yaml.safe_load((PRESETS / f"{name}.yaml").read_text())["model"])


def tiny(**changes) -> EchoCodec:
    torch.manual_seed(0)
    return EchoCodec(CodecConfig(**{**vars(preset("tiny")), **changes}))


@pytest.mark.parametrize(
    "name, sample_rate, frame_rate, kbps",
    [("tiny", 16000, 100, 0.8), ("cpu", 16000, 50, 1.8), ("base", 24000, 75, 6.0)],
)
def test_presets_shapes_and_bitrate(name, sample_rate, frame_rate, kbps):
    config = preset(name)
    assert (config.sample_rate, config.frame_rate) == (sample_rate, frame_rate)
    assert config.bitrate / 1000 == pytest.approx(kbps)
    if name == "base":
        return  # the base model's shapes are the same code; building it here would only cost time
    codec = EchoCodec(config).eval()
    T = int(0.37 * sample_rate)  # not a whole number of frames
    codes = codec.encode(torch.randn(2, 1, T) * 0.1)
    F = math.ceil(T / config.hop_length)
    assert codes.shape == (2, config.n_q, F) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < config.codebook_size
    assert codec.decode(codes).shape == (2, 1, F * config.hop_length)
    assert codec.decode(codes[:, :1]).shape == (2, 1, F * config.hop_length)  # codebook 1 alone decodes
    out = codec(torch.randn(2, 1, T) * 0.1)
    assert out.wav.shape == (2, 1, T)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="not a multiple of the hop length"):
        CodecConfig(sample_rate=16000, strides=(3, 7))
    with pytest.raises(ValueError, match="activation"):
        CodecConfig(activation="relu")
    with pytest.raises(ValueError, match=r"unknown CodecConfig field\(s\) \['n_codebooks'\]"):
        CodecConfig.from_dict({"n_codebooks": 4})


def test_bad_input_is_a_clear_error():
    codec = tiny().eval()
    with pytest.raises(ValueError, match=r"mono audio \[B, 1, T\]"):
        codec.encode(torch.zeros(1, 2, 1600))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        codec.decode(torch.full((1, 2, 5), 16))
    with pytest.raises(ValueError, match="1 to 2"):
        codec.decode(torch.zeros(1, 3, 5, dtype=torch.long))


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_causal_output_does_not_depend_on_the_future(part):
    codec = tiny(causal=True, lstm_layers=1).eval()
    module = codec.encoder if part == "encoder" else codec.decoder
    channels = 1 if part == "encoder" else codec.config.latent_dim
    x = torch.randn(1, channels, 800 if part == "encoder" else 20)
    y = x.clone()
    cut = x.shape[-1] // 2
    y[..., cut:] = torch.randn_like(y[..., cut:])  # change only the future
    with torch.no_grad():
        a, b = module(x), module(y)
    scale = a.shape[-1] // x.shape[-1] if part == "decoder" else 1
    visible = cut * scale if part == "decoder" else cut // codec.hop_length
    assert torch.equal(a[..., :visible], b[..., :visible])
    assert not torch.equal(a, b)


def test_non_causal_output_does_see_the_future():
    codec = tiny(causal=False).eval()
    x = torch.randn(1, 1, 800)
    y = x.clone()
    y[..., 400:] = torch.randn_like(y[..., 400:])
    with torch.no_grad():
        a, b = codec.encoder(x), codec.encoder(y)
    assert not torch.equal(a[..., : 400 // codec.hop_length], b[..., : 400 // codec.hop_length])


# the istft body's tiny size: 100 frames a second like the seanet tiny preset
ISTFT = dict(architecture="istft", strides=(160,), n_fft=400, width=16, depth=1)


@pytest.mark.parametrize("body", [{}, ISTFT], ids=["seanet", "istft"])
def test_save_and_load_give_identical_outputs(tmp_path, body):
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig.from_dict({**preset("tiny").to_dict(), **body}))
    codec.train()
    codec(torch.randn(4, 1, 3200) * 0.1)  # k-means init and EMA updates change the codebook buffers
    codec.eval()
    wav = torch.randn(1, 1, 3200) * 0.1
    codec.save_pretrained(tmp_path / "codec")
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == ["config.json", "model.safetensors"]
    for loaded in (EchoCodec.from_pretrained(tmp_path / "codec"), load_codec(tmp_path / "codec")):
        assert loaded.config.to_dict() == codec.config.to_dict() and loaded.identity == codec.identity
        codes = codec.encode(wav)
        assert torch.equal(loaded.encode(wav), codes)
        assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_identity_follows_the_config():
    assert tiny().identity == tiny().identity
    assert tiny().identity.config_hash != tiny(codebook_size=32).identity.config_hash
    with pytest.raises(ValueError, match="codebook_size: 16 != 32"):
        tiny().identity.check_compatible(tiny(codebook_size=32).identity)


def test_load_codec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_codec(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_codec(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "echo_ar"}))
    with pytest.raises(ValueError, match="describes a 'echo_ar' model; expected an Echo codec or EnCodec"):
        load_codec(tmp_path / "empty")
    with pytest.raises(ValueError, match="describes a 'echo_ar' model; EchoCodec loads 'echo_codec' models"):
        EchoCodec.from_pretrained(tmp_path / "empty")


def test_load_refuses_unknown_fields(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_codebooks": 4}))
    with pytest.raises(ValueError, match=r"unknown CodecConfig field\(s\) \['n_codebooks'\] in .*; known: \["
                                         r"'activation', 'architecture'"):
        load_codec(tmp_path)


def test_load_codec_from_a_hub_id(tmp_path, monkeypatch):
    import huggingface_hub

    codec = tiny().eval()
    codec.save_pretrained(tmp_path)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(repo) or str(tmp_path))
    loaded = load_codec("someone/echo-codec")
    assert isinstance(loaded, EchoCodec) and loaded.identity == codec.identity and asked == ["someone/echo-codec"]


def test_the_interface_imports_no_implementation():
    import ast

    import codec.interface

    tree = ast.parse(Path(codec.interface.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & {"codec.model", "codec.encodec"}


def test_reconstruction_loss_falls_on_a_fixed_batch():
    codec = tiny(channels=8, latent_dim=16, quantizer_dropout=0.0)
    t = torch.arange(3200) / 16000
    wav = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (220.0, 330.0, 440.0, 550.0)]).unsqueeze(1)
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = codec(wav)
        loss = multiscale_mel_loss(out.wav, wav, 16000) + out.commitment_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


@pytest.mark.parametrize("body", ["seanet", "istft"])
def test_expected_code_vectors_decode_like_codes_and_mix_linearly(body):
    torch.manual_seed(0)
    overrides = {"architecture": "istft", "strides": (320,), "n_fft": 640, "width": 16, "depth": 1} \
        if body == "istft" else {"channels": 4, "strides": (4, 5, 8), "dilations": (1,)}
    codec = EchoCodec(CodecConfig(sample_rate=16000, latent_dim=8, n_q=3, codebook_size=16, **overrides)).eval()
    codes = torch.randint(0, 16, (2, 3, 7))
    one_hot = torch.nn.functional.one_hot(codes, 16).float()  # [B, K, F, C]
    torch.testing.assert_close(codec.decode_expected(one_hot), codec.decode(codes), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(codec.decode_expected(one_hot[:, :1]), codec.decode(codes[:, :1]), atol=1e-5, rtol=1e-4)
    # half one code, half another: the latent is the mean of the two codes' latents
    other = (codes + 1) % 16
    mixed = 0.5 * one_hot + 0.5 * torch.nn.functional.one_hot(other, 16).float()
    expected = 0.5 * (codec.quantizer.decode(codes) + codec.quantizer.decode(other))
    torch.testing.assert_close(codec.quantizer.decode_expected(mixed), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="probabilities"):
        codec.decode_expected(one_hot[..., :8])
    with pytest.raises(ValueError, match="codebooks"):
        codec.decode_expected(torch.cat([one_hot, one_hot[:, :1]], 1))
