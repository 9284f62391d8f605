"""The codec's pitch stream: F0 per frame, its codes, the harmonic source, and the codes' row order."""

import math

import numpy as np
import pytest
import torch

from codec.evaluation import evaluate_codec
from codec.metrics import bitrate
from codec.model import CodecConfig, EchoCodec
from codec.pitch import PITCH_FMAX, PITCH_FMIN, dequantize_f0, frame_f0, harmonic_excitation, quantize_f0

pytestmark = pytest.mark.usefixtures("one_thread")

SR, HOP = 16000, 160
TINY = dict(sample_rate=SR, architecture="istft", strides=(HOP,), n_fft=400, width=16, depth=1, latent_dim=8,
            n_q=2, codebook_size=16)  # fmt: skip


def tone(frequencies: list[float], seconds_each: float = 0.5) -> torch.Tensor:
    """A phase-continuous tone holding each frequency in turn, [1, 1, T]."""
    f = torch.cat([torch.full((int(seconds_each * SR),), f) for f in frequencies])
    return 0.5 * torch.sin(torch.cumsum(2 * math.pi * f / SR, 0))[None, None]


def test_codes_round_trip_within_half_a_bin_and_zero_is_unvoiced():
    bins = 64
    f0 = torch.tensor([0.0, PITCH_FMIN, 100.0, 220.0, 333.0, PITCH_FMAX, 30.0, 900.0])
    codes = quantize_f0(f0, bins)
    assert codes[0] == 0 and codes[1:].min() >= 1 and codes.max() == bins - 1
    assert codes[6] == 1 and codes[7] == bins - 1  # out of range: the nearest end
    half_bin = math.log(PITCH_FMAX / PITCH_FMIN) / (bins - 2) / 2
    back = dequantize_f0(codes, bins)
    assert back[0] == 0
    assert torch.all((back[1:6].log() - f0[1:6].log()).abs() <= half_bin + 1e-6)


def test_frame_f0_follows_a_tone_frame_by_frame():
    wav = tone([150.0, 250.0])  # the change falls on the boundary of frames 49 and 50
    f0 = frame_f0(wav, SR, HOP)[0]
    assert f0.shape == (100,)
    assert torch.allclose(f0[2:47], torch.tensor(150.0), rtol=0.02)
    assert torch.allclose(f0[53:97], torch.tensor(250.0), rtol=0.02)
    silence = frame_f0(torch.zeros(1, 1, 8000), SR, HOP)
    assert torch.equal(silence, torch.zeros(1, 50))


def test_harmonic_excitation_has_the_harmonics_below_nyquist_and_is_silent_when_unvoiced():
    f0 = torch.tensor([[0.0] * 10 + [1000.0] * 100 + [0.0] * 10 + [123.0] * 10])
    x = harmonic_excitation(f0, SR, HOP)[0]
    assert x.shape == (130 * HOP,)
    assert torch.all(x[: 10 * HOP] == 0) and torch.all(x[110 * HOP : 120 * HOP] == 0)  # unvoiced: silence
    spectrum = torch.fft.rfft(x[20 * HOP : 20 * HOP + SR // 2]).abs()  # 0.5 s: a bin every 2 Hz
    harmonics = spectrum[torch.arange(1, 8) * 500]  # 1, 2, ..., 7 kHz
    assert torch.all(harmonics > 100 * spectrum.median())
    assert spectrum[750] < 0.01 * harmonics.min()  # 1.5 kHz, half-way between two harmonics: nothing
    # At 3 kHz the third harmonic (9 kHz) is above Nyquist: left out, not folded back to 7 kHz.
    high = torch.fft.rfft(harmonic_excitation(torch.full((1, 50), 3000.0), SR, HOP)[0, : SR // 2]).abs()
    assert high[1500] > 100 * high[3500]


def test_harmonic_excitation_is_the_sum_of_its_harmonics_sines():
    """The closed form equals sin(phase) + sin(2 phase) + ... over the harmonics below Nyquist, including where
    the last one lies just below it (123 Hz: the 65th, 7995 Hz), where one lies on it (1 kHz, 8 kHz: silent
    there either way), and where the phase passes through whole turns."""
    f0 = torch.tensor([[1000.0] * 3 + [0.0] * 2 + [123.0] * 4 + [60.0] * 2 + [444.4] * 3 + [0.0] + [8000.0] * 2])
    x = harmonic_excitation(f0, SR, HOP)[0].double()
    per_sample = f0[0].double().repeat_interleave(HOP)
    step, phase, previous = (2 * math.pi * per_sample / SR).tolist(), [], 0.0
    for t, voiced in enumerate((per_sample > 0).tolist()):  # one step of 2 pi F0 / SR per sample from each onset
        previous = previous + step[t] if voiced else 0.0
        phase.append(previous)
    phase = torch.tensor(phase, dtype=torch.float64)
    expected = torch.zeros_like(phase)
    for k in range(1, SR // 2 // 60 + 1):
        expected += torch.sin(k * phase) * (per_sample > 0) * (k * per_sample < SR / 2)
    assert torch.allclose(x, expected, atol=1e-3), (x - expected).abs().max()
    assert torch.all(x[-2 * HOP:] == 0)  # 8 kHz: no harmonic below Nyquist


def test_codes_carry_the_pitch_as_row_two_and_every_prefix_decodes():
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(**TINY, pitch_bins=8)).eval()
    assert codec.n_q == 3 and codec.identity.n_q == 3
    wav = tone([150.0, 250.0])
    codes = codec.encode(wav)
    assert codes.shape == (1, 3, 100)
    assert torch.equal(codes[:, 1], quantize_f0(frame_f0(wav, SR, HOP), 8))
    assert torch.equal(codes[:, [0, 2]], codec.quantizer.encode(codec.encoder(wav)))  # the RVQ's own codes
    assert torch.equal(codec.encode(wav, n_q=2), codes[:, :2])
    assert torch.equal(codec.encode(wav, n_q=1), codes[:, :1])
    for rows in (1, 2, 3):
        assert codec.decode(codes[:, :rows]).shape == wav.shape
    # 100 frames a second: codebook 1 (4 bits), the pitch (3 bits), codebook 2 (4 bits).
    assert [bitrate(codec, rows) for rows in (1, 2, 3)] == [400.0, 700.0, 1100.0]
    assert codec.config.bitrate == 1100.0
    bad = codes.clone()
    bad[:, 1] = 8
    with pytest.raises(ValueError, match="pitch stream"):
        codec.decode(bad)
    # An LM's distribution over the pitch row spans the whole code space: only its first 8 codes are F0s.
    probabilities = torch.nn.functional.one_hot(codes, 16).float()
    assert torch.equal(codec.decode_expected(probabilities), codec.decode(codes))
    probabilities[:, 1, :, 12] = 2.0  # the most likely code is not a pitch code
    assert torch.equal(codec.decode_expected(probabilities), codec.decode(codes))


def test_the_evaluation_report_names_the_pitch_row_and_its_bitrates():
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(**TINY, pitch_bins=8)).eval()
    report = evaluate_codec(codec, [("glide", tone([150.0, 250.0])[0, 0])], n_q_values=[3, 2, 1])
    assert [s.kbps for s in report.summaries] == [1.1, 0.7, 0.4]
    usage = report.to_markdown().split("Codebook usage")[1]
    assert "2 (F0): " in usage and "of 8" in usage  # its usage counts against its 8 codes, not the 16


def test_a_window_that_starts_before_a_voiced_run_decodes_it_as_the_whole_does():
    """Synthesis decodes block by block, each block on a window with context before it (app/tts.py): where the
    window reaches back past the onset of the voicing, its excitation and audio are the whole utterance's."""
    f0 = torch.tensor([[180.0] * 30 + [0.0] * 5 + [120.0 + k for k in range(60)] + [0.0] * 5 + [210.0] * 40])
    whole = harmonic_excitation(f0, SR, HOP)
    for start in (31, 34):  # within the unvoiced gap: the window holds the whole of the second run
        assert torch.allclose(harmonic_excitation(f0[:, start:], SR, HOP), whole[:, start * HOP:], atol=1e-3)
    inside = harmonic_excitation(f0[:, 7:], SR, HOP)[:, :20 * HOP]  # 12.6 periods into the first run
    assert not torch.allclose(inside, whole[:, 7 * HOP:27 * HOP], atol=1e-2)  # a window inside a run cannot know its phase
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(**TINY, pitch_bins=16)).eval()
    with torch.no_grad():  # as if trained: both of the source's paths carry the excitation
        codec.decoder.source.gain.fill_(0.1)
        codec.decoder.source.project.weight.normal_(0, 0.1)
    wav = torch.cat([tone([150.0], 0.6), torch.zeros(1, 1, int(0.6 * SR)), tone([220.0], 0.6)], -1)
    codes = codec.encode(wav)  # frames 0-59 voiced, 60-119 silent, 120-179 voiced
    assert codes[0, 1, 65:115].eq(0).all() and codes[0, 1, 125:175].gt(0).all()
    with torch.no_grad():
        full = codec.decode(codes)[0, 0]
        window = codec.decode(codes[..., 100:])[0, 0]
    # The window's edge affects only the decoder's reach (a few frames); the second run is as in the whole.
    assert torch.allclose(window[(115 - 100) * HOP:], full[115 * HOP:], atol=1e-4)


def test_a_new_pitch_stream_decodes_as_before_until_it_trains():
    torch.manual_seed(0)
    plain = EchoCodec(CodecConfig(**TINY)).eval()
    pitched = EchoCodec(CodecConfig(**TINY, pitch_bins=8)).eval()
    missing, unexpected = pitched.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("decoder.source.") for k in missing)
    wav = tone([200.0])
    codes = pitched.encode(wav)
    assert torch.equal(pitched.decode(codes), plain.decode(codes[:, [0, 2]]))
    # Trained, the harmonic source changes the output and its gradient reaches both of its paths.
    pitched.train()
    out = pitched(wav, n_q=3)
    (out.wav - wav).abs().mean().backward()
    source = pitched.decoder.source
    assert source.gain.grad.abs().sum() > 0 and source.project.weight.grad.abs().sum() > 0


def test_training_drops_the_pitch_only_for_items_left_with_codebook_one():
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(**TINY, pitch_bins=8, quantizer_dropout=1.0)).train()
    seen = []
    codec.decoder.register_forward_hook(lambda module, args, output: seen.append(args))
    wav = tone([200.0]).expand(64, 1, -1).contiguous()
    out = codec(wav)
    latent, f0 = seen[0]
    voiced = (f0 > 0).any(dim=1)
    two_layers = out.quantizer.layer_mask[:, 1]
    assert torch.all(voiced[two_layers])  # every item with both codebooks hears the pitch
    one = ~two_layers
    assert 0 < voiced[one].sum() < one.sum()  # half of those with codebook 1 alone do


def test_config_keeps_old_hashes_and_refuses_a_pitch_stream_it_cannot_hold(tmp_path):
    plain = CodecConfig(**TINY)
    assert "pitch_bins" not in plain.to_dict()  # codecs without it keep their config hash
    with pytest.raises(ValueError, match="istft"):
        CodecConfig(sample_rate=SR, pitch_bins=8)
    with pytest.raises(ValueError, match="codebook_size"):
        CodecConfig(**TINY, pitch_bins=32)
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(**TINY, pitch_bins=8)).eval()
    with torch.no_grad():
        codec.decoder.source.gain.fill_(0.3)
    codec.save_pretrained(tmp_path / "codec")
    loaded = EchoCodec.from_pretrained(tmp_path / "codec")
    assert loaded.config == codec.config
    wav = tone([180.0])
    assert torch.equal(loaded.decode(loaded.encode(wav)), codec.decode(codec.encode(wav)))


def test_the_unquantized_decoding_skips_only_the_codebooks():
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(**TINY, pitch_bins=8)).eval()
    wav = tone([150.0, 220.0], 0.3)
    unquantized, coded = codec.decode_unquantized(wav), codec.decode(codec.encode(wav))
    assert unquantized.shape == coded.shape == (1, 1, wav.shape[-1])
    for layer in codec.quantizer.layers:  # other codebooks: the codes' decoding moves, the latent's does not
        layer.embedding.mul_(2.0)
    assert not torch.allclose(codec.decode(codec.encode(wav)), coded, atol=1e-4)
    assert torch.equal(codec.decode_unquantized(wav), unquantized)
    # The pitch stream's F0 still reaches it: a deeper comb changes it.
    with torch.no_grad():
        codec.decoder.source.gain.fill_(0.5)
    assert not torch.allclose(codec.decode_unquantized(wav), unquantized, atol=1e-4)
