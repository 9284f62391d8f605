"""EnCodec through the whole pipeline: corpus -> EnCodec tokens -> AR + NAR training -> export -> TTS.

The EnCodec is a tiny random-weight `transformers.EncodecModel` saved locally the way a hub
snapshot is laid out (no echo_codec.json); nothing is downloaded. It keeps the real model's
24 kHz and 75 frames a second (hop 320), with 4 codebooks of 16 entries at its 1.2 kbps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("transformers")
from app import TTS
from codec.encodec import EncodecCodec
from data.prepare import write_corpus
from data.synthetic import build_synthetic_corpus
from data.tokens import TokenCorpus
from lm.generation import length_limits
from lm.sampling import SamplingConfig
from test_encodec_backend import tiny_encodec
from test_prompt import speech_like

from recipes import tokenize_corpus
from recipes import train_lm

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE_RATE, HOP = 24_000, 320  # 8 * 5 * 4 * 2, as in facebook/encodec_24khz: 75 frames a second
N_Q = 4  # 1.2 kbps / (75 frames/s x 4 bits)
TEXT = "The children found a tiny kite near the bridge."


def test_encodec_tokens_train_export_and_speak(tmp_path: Path) -> None:
    encodec_dir = tmp_path / "encodec"
    tiny_encodec(upsampling_ratios=[8, 5, 4, 2], target_bandwidths=[0.6, 1.2]).save_pretrained(encodec_dir)
    codec = EncodecCodec.from_pretrained(encodec_dir)  # what the recipes will load: the largest bandwidth ≤ 6 kbps
    assert (codec.sample_rate, codec.hop_length, codec.frame_rate, codec.n_q) == (SAMPLE_RATE, HOP, 75.0, N_Q)

    # A corpus at 16 kHz, so that tokenizing also resamples to the codec's 24 kHz.
    corpus = tmp_path / "corpus"
    utterances = build_synthetic_corpus(corpus, hours=0.005, num_speakers=2, sample_rate=16_000, workers=1,
                                        use_flite=False)
    write_corpus(corpus, utterances, {}, min_duration=0.3, max_duration=20, dev_fraction=0.0, held_out_speakers=0,
                 seed=0)
    tokenize_corpus.main(["--codec", str(encodec_dir), "--manifest", str(corpus / "train.jsonl"),
                          "--out", str(tmp_path / "tokens")])

    tokens = TokenCorpus.open(tmp_path / "tokens")
    assert len(tokens) >= 4
    assert tokens.codec_identity == codec.identity
    assert (tokens.n_q, tokens.frame_rate) == (N_Q, 75.0)
    for item in tokens:
        K, T = item.codes.shape  # codebooks, frames
        assert K == N_Q
        assert T == math.ceil(round(item.record.duration * SAMPLE_RATE) / HOP)  # durations are at the codec's rate
        assert 0 <= int(item.codes.min()) and int(item.codes.max()) < codec.codebook_size
    assert torch.cat([item.codes[0] for item in tokens]).unique().numel() > 1  # the codebooks were seeded

    run_dir = tmp_path / "run"
    train_lm.main(["--preset", "tiny", "--tokens", str(tmp_path / "tokens"), "--run_dir", str(run_dir),
                   "--codec", str(encodec_dir), "--stage", "both", "--steps", "4", "--val_every", "100000",
                   "--checkpoint_every", "100000", "--log_every", "100"])

    tts = TTS.from_pretrained(run_dir / "model")
    assert isinstance(tts.codec, EncodecCodec) and tts.codec.identity == codec.identity
    prompt = tmp_path / "prompt.wav"
    sf.write(prompt, speech_like(3.0, sr=16_000), 16_000)
    wav, sample_rate = tts.synthesize(TEXT, str(prompt), seed=0, sampling=SamplingConfig(temperature=0))

    assert sample_rate == SAMPLE_RATE == tts.sample_rate
    assert wav.ndim == 1 and wav.dtype == "float32" and wav.size > 0
    assert np.isfinite(wav).all()
    # Four training steps do not teach the AR where an utterance ends, so it may stop anywhere
    # synthesis lets it: within the limits set from the text at EnCodec's frame rate. The audio,
    # trimmed of silent edges, lies within those frames.
    result = tts.generate(TEXT, str(prompt), seed=0, sampling=SamplingConfig(temperature=0))
    assert (result.wav == wav).all()  # the same seed speaks the same audio
    K, T = result.segments[0].chosen.codes.shape  # codebooks, frames
    assert K == N_Q
    low, high = length_limits(torch.tensor([len(tts.frontend.encode(TEXT, "en-us"))]), codec.frame_rate)
    assert int(low) <= T <= int(high)
    assert len(wav) <= T * HOP
