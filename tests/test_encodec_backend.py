"""EnCodec backend on a tiny random-weight EncodecModel saved locally; nothing is downloaded."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import huggingface_hub.constants  # noqa: E402
from transformers import EncodecConfig, EncodecModel  # noqa: E402

from codec.encodec import ECHO_CODEC_FILE, EncodecCodec  # noqa: E402
from codec.loading import load_codec  # noqa: E402

HOP = 32  # 8 * 4
# 16 entries = 4 bits per code, 24000 / 32 = 750 frames/s: 3 kbps per codebook.
BANDWIDTH_TO_N_Q = {3.0: 1, 6.0: 2, 12.0: 4}


def speech_like(batch: int, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(batch, 1, samples, generator=generator)


def tiny_encodec(**overrides: object) -> EncodecModel:
    """A ~13k-parameter EnCodec at 24 kHz with usable codebooks (transformers initialises them to zero)."""
    settings: dict[str, object] = dict(
        target_bandwidths=list(BANDWIDTH_TO_N_Q),
        sampling_rate=24_000,
        num_filters=4,
        hidden_size=16,
        upsampling_ratios=[8, 4],
        codebook_size=16,
        num_lstm_layers=1,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**settings))
    model.eval()
    with torch.no_grad():
        # Random weights leave the encoder's output nearly constant, so random codebooks would
        # give one code everywhere; seed each codebook with residual frames instead (k-means' init).
        audio = speech_like(1, 64 * model.config.hop_length).expand(-1, model.config.audio_channels, -1)
        latents = model.encoder(audio)  # [1, D, 64]
        residual = latents.transpose(1, 2).reshape(-1, latents.shape[1])  # [frames, D]
        for layer in model.quantizer.layers:
            codebook = layer.codebook
            codebook.embed.copy_(residual[torch.randperm(len(residual))[: codebook.codebook_size]])
            codebook.embed_avg.copy_(codebook.embed)
            residual = residual - codebook.decode(codebook.encode(residual))
    return model


@pytest.fixture(scope="module")
def encodec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory as transformers writes it (no echo_codec.json), like a hub snapshot."""
    directory = tmp_path_factory.mktemp("encodec")
    tiny_encodec().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def codecs(encodec_dir: Path) -> dict[float, EncodecCodec]:
    """One codec per bandwidth, shared: they are frozen and hold no state."""
    return {bandwidth: EncodecCodec.from_pretrained(encodec_dir, bandwidth=bandwidth) for bandwidth in BANDWIDTH_TO_N_Q}


def test_default_bandwidth_and_properties(encodec_dir: Path) -> None:
    codec = EncodecCodec.from_pretrained(encodec_dir)
    assert codec.bandwidth == 6.0  # the largest ≤ 6 kbps
    assert codec.n_q == 2
    assert codec.sample_rate == 24_000
    assert codec.frame_rate == 750.0
    assert codec.hop_length == HOP
    assert codec.codebook_size == 16
    assert not codec.model.training


def check_round_trip_shapes(codec: EncodecCodec, batch: int, samples: int) -> torch.Tensor:
    codes = codec.encode(speech_like(batch, samples))
    frames = math.ceil(samples / HOP)
    assert codes.shape == (batch, codec.n_q, frames)
    assert codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < codec.codebook_size

    wav = codec.decode(codes)
    assert wav.shape == (batch, 1, frames * HOP)
    assert wav.dtype == torch.float32
    assert 0 <= wav.shape[-1] - samples < HOP
    assert torch.isfinite(wav).all()
    return codes


@pytest.mark.parametrize("bandwidth, n_q", BANDWIDTH_TO_N_Q.items())
def test_codebooks_follow_bandwidth(codecs: dict[float, EncodecCodec], bandwidth: float, n_q: int) -> None:
    assert codecs[bandwidth].n_q == n_q
    check_round_trip_shapes(codecs[bandwidth], batch=2, samples=1000)  # 31.25 frames


@pytest.mark.parametrize("samples", [1, HOP * 10])
def test_frames_are_ceil_of_samples_over_hop(codecs: dict[float, EncodecCodec], samples: int) -> None:
    check_round_trip_shapes(codecs[6.0], batch=1, samples=samples)


def test_codes_are_not_degenerate(codecs: dict[float, EncodecCodec]) -> None:
    codes = codecs[12.0].encode(speech_like(2, 2000))
    assert codes.unique().numel() > 4  # otherwise the equality tests below would prove little


def test_decode_accepts_fewer_codebooks_and_int16(codecs: dict[float, EncodecCodec]) -> None:
    codec = codecs[12.0]
    codes = codec.encode(speech_like(1, 2000))
    assert codec.decode(codes[:, :1]).shape == (1, 1, codes.shape[-1] * HOP)
    assert torch.equal(codec.decode(codes.to(torch.int16)), codec.decode(codes))  # token shards store int16


def test_expected_code_vectors_decode_like_codes(codecs: dict[float, EncodecCodec]) -> None:
    codec = codecs[max(codecs)]
    codes = codec.encode(torch.randn(1, 1, codec.hop_length * 5) * 0.1)
    one_hot = torch.nn.functional.one_hot(codes, codec.codebook_size).float()
    torch.testing.assert_close(codec.decode_expected(one_hot), codec.decode(codes), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="probabilities"):
        codec.decode_expected(one_hot[..., :2])


def test_n_q_selects_bandwidth(encodec_dir: Path) -> None:
    assert EncodecCodec.from_pretrained(encodec_dir, n_q=4).bandwidth == 12.0
    assert EncodecCodec.from_pretrained(encodec_dir, bandwidth=3, n_q=1).n_q == 1


def test_bad_bandwidth_or_n_q_lists_the_options(encodec_dir: Path) -> None:
    options = "3 kbps (n_q=1), 6 kbps (n_q=2), 12 kbps (n_q=4)"
    with pytest.raises(ValueError, match=r"bandwidth 5\.0 kbps .*" + re.escape(options)):
        EncodecCodec.from_pretrained(encodec_dir, bandwidth=5.0)
    with pytest.raises(ValueError, match=r"n_q=3 .*" + re.escape(options)):
        EncodecCodec.from_pretrained(encodec_dir, n_q=3)
    with pytest.raises(ValueError, match=r"6 kbps means n_q=2, not n_q=4"):
        EncodecCodec.from_pretrained(encodec_dir, bandwidth=6.0, n_q=4)


def test_identity(encodec_dir: Path, codecs: dict[float, EncodecCodec]) -> None:
    low, high = codecs[3.0].identity, codecs[12.0].identity
    assert (low.name, low.sample_rate, low.frame_rate, low.n_q, low.codebook_size) == ("encodec", 24_000, 750.0, 1, 16)
    assert high.n_q == 4
    assert low.config_hash != high.config_hash
    assert EncodecCodec.from_pretrained(encodec_dir, bandwidth=3.0).identity == low
    with pytest.raises(ValueError, match="different codec"):
        high.check_compatible(low)


def test_identity_ignores_bookkeeping_keys(encodec_dir: Path, tmp_path: Path) -> None:
    config = json.loads((encodec_dir / "config.json").read_text())
    config.update(
        transformers_version="4.31.0.dev0",
        _name_or_path="facebook/encodec_24khz",
        torch_dtype="float32",
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((encodec_dir / "model.safetensors").read_bytes())
    assert EncodecCodec.from_pretrained(tmp_path).identity == EncodecCodec.from_pretrained(encodec_dir).identity


def test_bad_inputs_are_refused(codecs: dict[float, EncodecCodec]) -> None:
    codec = codecs[6.0]
    with pytest.raises(ValueError, match=r"\[B, 1, T\]"):
        codec.encode(torch.zeros(2, 1000))
    with pytest.raises(ValueError, match=r"\[B, 1, T\]"):
        codec.encode(torch.zeros(2, 2, 1000))
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(2, 1, 0))
    with pytest.raises(ValueError, match=r"\[B, K, F\]"):
        codec.decode(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="3 codebooks"):
        codec.decode(torch.zeros(2, 3, 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        codec.decode(torch.full((2, 2, 10), 16))
    with pytest.raises(TypeError, match="integer"):
        codec.decode(torch.zeros(2, 2, 10))
    with pytest.raises(ValueError, match="F = 0"):
        codec.decode(torch.zeros(2, 2, 0, dtype=torch.long))


def test_save_and_reload_round_trip(codecs: dict[float, EncodecCodec], tmp_path: Path) -> None:
    codec = codecs[12.0]
    saved = codec.save_pretrained(tmp_path / "codec")
    assert {p.name for p in saved.iterdir()} == {"config.json", "model.safetensors", ECHO_CODEC_FILE}
    assert json.loads((saved / "config.json").read_text())["model_type"] == "encodec"

    wav = speech_like(2, 3000)
    codes = codec.encode(wav)
    decoded = codec.decode(codes)
    for reloaded in (load_codec(saved), EncodecCodec.from_pretrained(saved)):
        assert isinstance(reloaded, EncodecCodec)
        assert reloaded.bandwidth == 12.0 and reloaded.n_q == 4  # not the 6 kbps default
        assert reloaded.identity == codec.identity
        assert torch.equal(reloaded.encode(wav), codes)
        assert torch.equal(reloaded.decode(codes), decoded)

    assert EncodecCodec.from_pretrained(saved, bandwidth=3.0).n_q == 1  # an explicit choice wins
    assert load_codec(saved, n_q=2).bandwidth == 6.0


def test_dtype_and_frozen_mode(encodec_dir: Path) -> None:
    codec = EncodecCodec.from_pretrained(encodec_dir, dtype=torch.float64, device="cpu")
    assert next(codec.model.parameters()).dtype == torch.float64
    assert codec.decode(codec.encode(speech_like(1, 500))).dtype == torch.float32
    codec.train()
    assert not codec.model.training


def test_unsupported_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="chunk_length_s=1.0.*normalize=True.*encodec_24khz"):
        EncodecCodec(tiny_encodec(chunk_length_s=1.0, overlap=0.01, normalize=True))
    with pytest.raises(ValueError, match="audio_channels=2"):
        EncodecCodec(tiny_encodec(audio_channels=2))


def test_uncached_hub_id_offline_says_to_save_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import, so set what it read as well.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub_id = "echo-tests/encodec-never-downloaded"
    with pytest.raises(OSError, match=r"(?s)not a local directory.*save_pretrained"):
        EncodecCodec.from_pretrained(hub_id)
    with pytest.raises(OSError, match=r"save_pretrained"):
        load_codec(hub_id)


def test_missing_local_directory(encodec_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EncodecCodec.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        EncodecCodec.from_pretrained(tmp_path)  # exists, but holds no config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "echo_codec"}))
    with pytest.raises(ValueError, match="describes a 'echo_codec' model; EncodecCodec loads 'encodec' models"):
        EncodecCodec.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((encodec_dir / "config.json").read_text())
    with pytest.raises(OSError, match="not an EnCodec directory written by save_pretrained"):
        EncodecCodec.from_pretrained(tmp_path)  # a config without weights


def test_a_hub_id_loads_its_snapshot(codecs: dict[float, EncodecCodec], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    codecs[3.0].save_pretrained(tmp_path)
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, allow_patterns: asked.append((repo, allow_patterns)) or str(tmp_path))
    for codec in (EncodecCodec.from_pretrained("someone/encodec"), load_codec("someone/encodec")):
        assert isinstance(codec, EncodecCodec) and codec.identity == codecs[3.0].identity
    assert asked[0] == ("someone/encodec", ["config.json", "model.safetensors", ECHO_CODEC_FILE])
