"""The istft body of Echo's codec: STFT → ConvNeXt at the frame rate → RVQ → ConvNeXt → inverse STFT."""

import math

import pytest
import torch

from codec.losses import multiscale_mel_loss
from codec.model import CodecConfig, EchoCodec

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16000
TINY = dict(sample_rate=SR, architecture="istft", strides=(160,), n_fft=400, width=16, depth=1, latent_dim=8,
            n_q=2, codebook_size=16)  # fmt: skip  # 100 frames a second


def tiny(**changes) -> EchoCodec:
    torch.manual_seed(0)
    return EchoCodec(CodecConfig(**{**TINY, **changes}))


def test_shapes_frame_rate_and_bitrate():
    codec = tiny().eval()
    assert (codec.hop_length, codec.frame_rate) == (160, 100)
    assert codec.config.bitrate == 100 * 2 * 4  # frames a second * codebooks * log2(16)
    T = 1234  # not a whole number of frames
    wav = torch.randn(2, 1, T) * 0.1
    codes = codec.encode(wav)
    F = math.ceil(T / 160)
    assert codes.shape == (2, 2, F) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < 16
    assert codec.decode(codes).shape == (2, 1, F * 160)
    assert codec.decode(codes[:, :1]).shape == (2, 1, F * 160)  # codebook 1 alone decodes
    assert codec(wav).wav.shape == (2, 1, T)
    assert codec.encode(torch.randn(1, 1, 50)).shape == (1, 2, 1)  # shorter than the STFT's padding


def test_preset_sized_codec_has_50_hz_frames():
    config = CodecConfig(sample_rate=SR, architecture="istft", strides=(320,), n_fft=1024, n_q=4, codebook_size=512)
    assert (config.hop_length, config.frame_rate, config.bitrate) == (320, 50, 1800)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="causal=True is not possible with architecture='istft'"):
        CodecConfig(**TINY, causal=True)
    with pytest.raises(ValueError, match="n_fft must be at least the hop length 160"):
        CodecConfig(**{**TINY, "n_fft": 128})
    with pytest.raises(ValueError, match="differ from it by an even number"):
        CodecConfig(**{**TINY, "n_fft": 401})
    with pytest.raises(ValueError, match="architecture must be one of"):
        CodecConfig(**{**TINY, "architecture": "vocos"})


def test_config_json_holds_only_the_fields_of_its_architecture():
    istft = CodecConfig(**TINY)
    assert {"architecture", "n_fft", "width", "depth"} <= istft.to_dict().keys()
    assert not {"channels", "dilations", "activation", "lstm_layers"} & istft.to_dict().keys()
    assert CodecConfig.from_dict(istft.to_dict()) == istft
    # A SEANet config writes what it wrote before the option existed, so its config hash is unchanged.
    seanet = CodecConfig(sample_rate=SR).to_dict()
    assert not {"architecture", "n_fft", "width", "depth"} & seanet.keys()
    assert CodecConfig.from_dict(seanet).architecture == "seanet"


def test_overlap_add_inverts_the_encoders_stft():
    """The decoder's inverse STFT is exact on a real spectrum, edges included ("same" padding)."""
    codec = tiny()
    hop, n_fft = codec.hop_length, codec.config.n_fft
    wav = torch.randn(2, 1, 10 * hop)
    pad = (n_fft - hop) // 2
    padded = torch.nn.functional.pad(wav, (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(padded, n_fft, hop, window=torch.hann_window(n_fft), center=False, return_complex=True)
    assert spec.shape[-1] == 10
    torch.testing.assert_close(codec.decoder.overlap_add(spec), wav.squeeze(1), atol=1e-5, rtol=1e-5)


def test_an_istft_config_hashes_its_own_fields():
    assert tiny().identity.config_hash != tiny(n_fft=480).identity.config_hash


def test_straight_through_gradients_reach_the_encoder():
    codec = tiny()
    out = codec(torch.randn(2, 1, 1600) * 0.1)
    out.wav.square().mean().backward()  # the reconstruction alone: no commitment loss
    for name, parameter in codec.encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_reconstruction_loss_falls_on_a_fixed_batch():
    codec = tiny(width=32, quantizer_dropout=0.0)
    t = torch.arange(3200) / SR
    wav = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (220.0, 330.0, 440.0, 550.0)]).unsqueeze(1)
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = codec(wav)
        loss = multiscale_mel_loss(out.wav, wav, SR) + out.commitment_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
