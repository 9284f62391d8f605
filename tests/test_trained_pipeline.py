"""The whole path on a tiny scale: corpus -> tokens -> AR + NAR training -> export -> synthesize.

The AR model trains long enough (a few hundred steps on a dozen utterances) to learn where
an utterance ends, so synthesis stops on its own EOS and speaks for a plausible time.
"""


import pytest
import torch

from codec.model import CodecConfig, EchoCodec
from data.frontend import TextFrontend
from data.manifest import read_manifest
from data.prepare import write_corpus
from data.synthetic import build_synthetic_corpus
from data.tokenize import tokenize_corpus
from lm.sampling import SamplingConfig

from recipes import train_lm

pytestmark = pytest.mark.usefixtures("one_thread")



def test_a_trained_tiny_pipeline_speaks_for_a_plausible_time(tmp_path):
    corpus = tmp_path / "corpus"
    utterances = build_synthetic_corpus(corpus, hours=0.01, num_speakers=2, sample_rate=16000, workers=1, use_flite=False)
    write_corpus(corpus, utterances, {}, min_duration=0.3, max_duration=20, dev_fraction=0.0, held_out_speakers=0, seed=0)
    train = read_manifest(corpus / "train.jsonl")
    torch.manual_seed(0)
    codec = EchoCodec(CodecConfig(sample_rate=16000, channels=4, strides=(4, 5, 8), dilations=(1,), latent_dim=8,
                                  n_q=2, codebook_size=16)).eval()
    codec.save_pretrained(tmp_path / "codec")
    tokenize_corpus(codec, TextFrontend.build([u.text for u in train]), train, tmp_path / "tokens", progress=False)

    common = ["--preset", "tiny", "--tokens", str(tmp_path / "tokens"), "--run_dir", str(tmp_path / "run"),
              "--codec", str(tmp_path / "codec"), "--val_every", "100000", "--checkpoint_every", "100000",
              "--log_every", "100", "--lr", "3e-3", "--prompt.mode", "speaker"]
    train_lm.main([*common, "--stage", "ar", "--steps", "400"])
    train_lm.main([*common, "--stage", "nar", "--steps", "50"])

    from app import TTS

    tts = TTS.from_pretrained(tmp_path / "run" / "model")
    for utterance in train[:4]:
        prompt = next(u for u in train if u.speaker == utterance.speaker and u.id != utterance.id)
        result = tts.generate(utterance.text, str(corpus / prompt.audio_path), seed=0,
                              sampling=SamplingConfig(temperature=0))
        assert result.segments[0].chosen.finished, "the AR model must end the utterance itself"
        seconds = len(result.wav) / result.sample_rate
        assert 0.25 * utterance.duration < seconds < 2.5 * utterance.duration, (utterance.text, seconds)
