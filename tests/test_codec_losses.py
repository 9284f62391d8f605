import math

import pytest
import torch

from codec.discriminators import (
    Discriminator,
    DiscriminatorConfig,
    DiscriminatorOutput,
    MultiPeriodDiscriminator,
    MultiScaleSTFTDiscriminator,
)
from codec.losses import (
    discriminator_adversarial_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    mel_distance,
    multiscale_mel_loss,
    waveform_l1_loss,
)

TINY = DiscriminatorConfig(periods=(2, 3, 5), n_ffts=(128, 256, 64), channels=4)


def speech_like(T: int, sample_rate: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A harmonic tone with a little noise, [batch, 1, T]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T) / sample_rate
    f0 = 120.0 + 40.0 * torch.rand(batch, 1, 1, generator=g)
    wav = sum(0.3 / h * torch.sin(2 * math.pi * h * f0 * t) for h in range(1, 6))
    return wav + 0.01 * torch.randn(batch, 1, T, generator=g)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("T", [3000, 3001, 2999])  # 3001 and 2999 divide by none of the periods 2, 3, 5
def test_period_discriminator_shapes(T):
    torch.manual_seed(0)
    mpd = MultiPeriodDiscriminator(TINY.periods, channels=TINY.channels)
    out = mpd(torch.randn(2, 1, T))
    assert isinstance(out, DiscriminatorOutput)
    assert len(out.logits) == len(out.features) == 3
    for p, logits, features in zip(TINY.periods, out.logits, out.features):
        H = ceil_div(T, p)
        for _ in range(4):  # four layers of stride 3
            H = ceil_div(H, 3)
        assert logits.shape == (2, 1, H, p)
        assert [f.shape[1] for f in features] == [4, 16, 64, 128, 128]
        assert all(f.shape[0] == 2 and f.shape[-1] == p for f in features)


@pytest.mark.parametrize("T", [3000, 3001])
def test_stft_discriminator_shapes(T):
    torch.manual_seed(0)
    msd = MultiScaleSTFTDiscriminator(TINY.n_ffts, channels=TINY.channels)
    out = msd(torch.randn(2, 1, T))
    assert len(out.logits) == len(out.features) == 3
    for n_fft, logits, features in zip(TINY.n_ffts, out.logits, out.features):
        frames, bins = T // (n_fft // 4) + 1, n_fft // 2 + 1
        for _ in range(3):  # three layers of stride 2 in frequency
            bins = ceil_div(bins, 2)
        assert logits.shape == (2, 1, frames, bins)
        assert len(features) == 5 and all(f.shape[:3] == (2, 4, frames) for f in features)


def test_discriminator_combines_and_can_leave_one_out():
    wav = torch.randn(1, 1, 2048)
    both = Discriminator(TINY)
    out = both(wav)
    assert both.names == ["mpd_2", "mpd_3", "mpd_5", "stft_128", "stft_256", "stft_64"]
    assert len(out.logits) == len(out.features) == 6
    only_stft = Discriminator(DiscriminatorConfig(n_ffts=(64,), channels=4, use_mpd=False))
    assert only_stft.names == ["stft_64"] and len(only_stft(wav).logits) == 1
    with pytest.raises(ValueError, match=r"\[B, 1, T\]"):
        both(torch.randn(1, 2048))


def test_gradients_reach_the_input_waveform():
    torch.manual_seed(0)
    disc = Discriminator(TINY)
    wav = torch.randn(2, 1, 2001, requires_grad=True)
    out = disc(wav)
    loss = generator_adversarial_loss(out.logits) + sum(f.abs().mean() for fs in out.features for f in fs)
    loss.backward()
    assert wav.grad is not None and wav.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.parameters())


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="use_mpd and use_stft"):
        DiscriminatorConfig(use_mpd=False, use_stft=False)
    with pytest.raises(ValueError, match="periods"):
        DiscriminatorConfig(periods=(2, 0))
    with pytest.raises(ValueError, match="n_ffts"):
        DiscriminatorConfig(n_ffts=(8,))
    with pytest.raises(ValueError, match="channels"):
        DiscriminatorConfig(channels=0)
    assert DiscriminatorConfig(periods=[2, 3]).periods == (2, 3)  # lists from JSON become tuples
    assert DiscriminatorConfig.for_sample_rate(24000).n_ffts == (1024, 2048, 512)
    assert DiscriminatorConfig.for_sample_rate(16000).n_ffts == (512, 1024, 256)
    assert DiscriminatorConfig.for_sample_rate(48000).n_ffts == (2048, 4096, 1024)


@pytest.mark.parametrize("sample_rate", [16000, 24000])
def test_mel_loss_grows_with_noise(sample_rate):
    x = speech_like(sample_rate // 2 + 1, sample_rate)  # odd T
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    same = multiscale_mel_loss(x, x, sample_rate)
    quiet = multiscale_mel_loss(x, x + 0.01 * noise, sample_rate)
    loud = multiscale_mel_loss(x, x + 0.1 * noise, sample_rate)
    assert same.dim() == 0 and same.item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < quiet < loud
    with_mag = multiscale_mel_loss(x, x + 0.1 * noise, sample_rate, mag_weight=1.0)
    assert with_mag > loud
    assert mel_distance(x, x, sample_rate).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < mel_distance(x, x + 0.01 * noise, sample_rate) < mel_distance(x, x + 0.1 * noise, sample_rate)


def test_mel_loss_rejects_impossible_scales():
    x = speech_like(4000, 16000)
    with pytest.raises(ValueError, match="n_mels=40 exceeds the 17 FFT bins"):
        multiscale_mel_loss(x, x, 16000, window_lengths=(32,), n_mels=(40,))
    with pytest.raises(ValueError, match="must match"):
        multiscale_mel_loss(x, x[..., :-1], 16000)
    with pytest.raises(ValueError, match="too short"):
        multiscale_mel_loss(x[..., :512], x[..., :512], 16000)


def test_cached_filterbanks_built_in_inference_mode_still_train():
    x = speech_like(4000, 22050)
    with torch.inference_mode():
        mel_distance(x, x, 22050)
        multiscale_mel_loss(x, x, 22050)
    x_hat = (0.5 * x).requires_grad_()
    multiscale_mel_loss(x_hat, x, 22050).backward()
    assert x_hat.grad.abs().sum() > 0


def test_waveform_l1():
    x = speech_like(1001, 16000)
    assert waveform_l1_loss(x, x) == 0
    assert waveform_l1_loss(x, x + 0.5).item() == pytest.approx(0.5)


def test_adversarial_losses_have_the_right_sign():
    high, low = [torch.ones(2, 1, 5, 3)], [torch.zeros(2, 1, 5, 3)]
    # The discriminator is happy when real scores high and fake low, unhappy the other way round.
    assert discriminator_adversarial_loss(high, low) == 0
    assert discriminator_adversarial_loss(low, high) > discriminator_adversarial_loss(high, low)
    assert generator_adversarial_loss(high) == 0
    assert generator_adversarial_loss(low) > generator_adversarial_loss(high)
    fake = torch.zeros(2, 1, 5, 3, requires_grad=True)
    generator_adversarial_loss([fake]).backward()
    assert (fake.grad < 0).all()  # the generator is pushed to raise its scores
    with pytest.raises(ValueError, match="same"):
        discriminator_adversarial_loss(high, low + low)


def test_feature_matching_is_zero_when_equal_and_spares_the_real_side():
    torch.manual_seed(0)
    disc = Discriminator(TINY)
    y = speech_like(2048, 16000).requires_grad_()
    real = disc(y).features
    assert feature_matching_loss(real, real) == 0
    x = (y.detach() + 0.1 * torch.randn_like(y)).requires_grad_()
    loss = feature_matching_loss(real, disc(x).features)
    assert loss > 0
    loss.backward()
    assert x.grad.abs().sum() > 0
    assert y.grad is None  # the real features were detached


def test_mel_loss_teaches_a_waveform():
    sample_rate = 16000
    target = speech_like(4000, sample_rate, batch=1)
    wav = (0.01 * torch.randn(1, 1, 4000, generator=torch.Generator().manual_seed(2))).requires_grad_()
    optimizer = torch.optim.Adam([wav], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = multiscale_mel_loss(wav, target, sample_rate)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
