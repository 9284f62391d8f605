"""Meters for evaluating speech: what an ASR model hears, and whose voice a speaker encoder hears.

    asr = load_asr("pocketsphinx")              # or a Whisper directory / hub id (app/asr.py)
    asr.transcribe(wav, 16000)                   # -> "the children found a tiny kite"
    word_errors("The children found a kite.", asr.transcribe(wav, 16000)).rate   # WER of one item

    speaker = load_speaker("resemblyzer")       # or a transformers x-vector model (WavLM) dir / hub id
    cosine_similarity(speaker.embed(wav_a, 16000), speaker.embed(wav_b, 24000))

Two kinds of meter, each behind one small interface:

- ASR (`transcribe(wav, sample_rate) -> str`): pocketsphinx 5 (offline; its wheel bundles an
  en-us model), or Whisper through transformers (`app.asr.WhisperASR`). `transcribe_all(asr, clips)`
  hears many clips: pocketsphinx's in parallel processes (`PocketSphinxASR.transcribe_many`).
- speaker (`embed(wav, sample_rate) -> unit vector`): resemblyzer (offline; bundles its
  encoder), or any transformers `*ForXVector` model such as microsoft/wavlm-base-plus-sv.

A meter whose package is missing, or whose model cannot be loaded, raises `MeterUnavailable`
with the reason and how to install it; nothing is imported until a meter is loaded.

Error rates compare normalized texts: numbers, currency and symbols spelled out as words
(data/normalize.py), then lower case without punctuation (app.scoring.normalize_transcript).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from app.scoring import edit_distance, normalize_transcript, unit
from data.audio import resample
from data.normalize import EmptyTextError, normalize_text

EVAL_EXTRA_HINT = "pip install 'echo-tts[eval]'"
METER_RATE = 16000  # pocketsphinx's en-us model and resemblyzer's encoder both work at 16 kHz
MIN_VOICED_SECONDS = 0.3  # resemblyzer's voice-activity trim may leave less than this of noise: keep the whole clip


class MeterUnavailable(RuntimeError):
    """A meter cannot run here: its package is missing or its model cannot be loaded (the message says the fix)."""


# -- error rates --------------------------------------------------------------------------------


def normalize_for_scoring(text: str, language: str = "en-us") -> str:
    """Lower-case words separated by single spaces, numbers and symbols spelled out: what WER and CER compare."""
    try:
        text = normalize_text(text, language)
    except EmptyTextError:
        return ""
    return normalize_transcript(text)


@dataclass(frozen=True)
class ErrorCount:
    """Edit errors against a reference of `length` units (words or characters); sum these over a corpus."""

    errors: int
    length: int

    @property
    def rate(self) -> float:
        """errors / length; an empty reference scores 0 against an empty hypothesis, else 1 per inserted unit."""
        return self.errors / self.length if self.length else float(self.errors > 0)

    def __add__(self, other: "ErrorCount") -> "ErrorCount":
        return ErrorCount(self.errors + other.errors, self.length + other.length)


def word_errors(reference: str, hypothesis: str, language: str = "en-us") -> ErrorCount:
    """Word edit errors of `hypothesis` against `reference`, both normalized first."""
    ref = normalize_for_scoring(reference, language).split()
    hyp = normalize_for_scoring(hypothesis, language).split()
    return ErrorCount(edit_distance(ref, hyp), len(ref))


def char_errors(reference: str, hypothesis: str, language: str = "en-us") -> ErrorCount:
    """Character edit errors (spaces included) of `hypothesis` against `reference`, both normalized first."""
    ref = normalize_for_scoring(reference, language)
    hyp = normalize_for_scoring(hypothesis, language)
    if not ref:
        return ErrorCount(len(hyp), 0)
    return ErrorCount(edit_distance(ref, hyp), len(ref))


def word_error_rate(reference: str, hypothesis: str, language: str = "en-us") -> float:
    return word_errors(reference, hypothesis, language).rate


# -- the interfaces ---------------------------------------------------------------------------------


class ASRMeter(Protocol):
    name: str

    def transcribe(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> str:
        """A mono waveform [T] at `sample_rate` -> what was said."""


class SpeakerMeter(Protocol):
    name: str

    def embed(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """A mono waveform [T] at `sample_rate` -> a unit-length speaker embedding [D]."""


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(a) @ unit(b))


def _mono_at(wav: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int) -> np.ndarray:
    """float32 [T] at `target_rate` from a mono waveform ([T], [1, T] or [1, 1, T])."""
    audio = torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1)  # [1, T]
    if audio.shape[1] == 0:
        raise ValueError("the waveform is empty")
    return resample(audio, sample_rate, target_rate)[0].numpy()


def _missing(package: str, error: ImportError, extra: str = "") -> MeterUnavailable:
    if error.name == "pkg_resources":  # webrtcvad (under resemblyzer) still imports it; setuptools 81 removed it
        return MeterUnavailable(f"{package} needs pkg_resources, which setuptools 81 removed: "
                                "pip install 'setuptools<81'")
    return MeterUnavailable(f"{package} is not installed ({error}): {EVAL_EXTRA_HINT} or pip install {package}{extra}")


# -- ASR meters ---------------------------------------------------------------------------------------


class PocketSphinxASR:
    """CMU pocketsphinx 5 with the en-us acoustic model, language model and dictionary its wheel bundles.

    Offline and fast (1.6 s of one slow core for a 2.3 s clip) but far from human: about 27 % WER
    on clean read speech, 20-50 % on flite voices and 76-83 % on eSpeak voices. Compare a
    synthesis with the ground truth of the same voice, never with zero.

    pocketsphinx holds the GIL while it decodes, so `transcribe_many` spreads clips over `workers`
    processes (default: the CPU count, at most 4), each with its own decoder; the transcripts are
    those of `transcribe`, one by one.
    """

    name = "pocketsphinx"

    def __init__(self, workers: int | None = None) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as error:
            raise _missing("pocketsphinx", error) from None
        self.decoder = Decoder(samprate=METER_RATE, loglevel="FATAL")
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def transcribe(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> str:
        return _sphinx_decode(self.decoder, _pcm16(wav, sample_rate))

    def transcribe_many(self, clips: Sequence[tuple[np.ndarray | torch.Tensor, int]]) -> list[str]:
        """[(mono waveform [T], sample rate)] -> what was said in each, in order."""
        pcms = [_pcm16(wav, rate) for wav, rate in clips]  # torch work stays in this process
        if self.workers < 2 or len(pcms) < 2:
            return [_sphinx_decode(self.decoder, pcm) for pcm in pcms]
        if self._pool is None:
            # fork: the workers start at once and run pocketsphinx only, never torch or OpenMP
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_sphinx_worker)
        return list(self._pool.map(_sphinx_decode_in_worker, pcms))


def _pcm16(wav: np.ndarray | torch.Tensor, sample_rate: int) -> bytes:
    audio = _mono_at(wav, sample_rate, METER_RATE)
    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()


def _sphinx_decode(decoder, pcm: bytes) -> str:
    # The decoder adapts its features to what it heard (the cepstral mean and more): without a
    # reset, a recording's transcript depended on the clips decoded before it. Resetting the
    # feature extraction alone gives the transcripts of a fresh decoder; reloading the whole
    # decoder (reinit) did too, at 0.6 s a call.
    decoder.reinit_feat()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


_worker_decoder = None  # a pool worker's own decoder


def _start_sphinx_worker() -> None:
    global _worker_decoder
    from pocketsphinx import Decoder

    _worker_decoder = Decoder(samprate=METER_RATE, loglevel="FATAL")


def _sphinx_decode_in_worker(pcm: bytes) -> str:
    return _sphinx_decode(_worker_decoder, pcm)


class WhisperMeter:
    """Whisper through transformers (`app.asr.WhisperASR`), from a local directory or a hub id."""

    def __init__(self, path_or_hub_id: str | Path, language: str = "en-us", device: str | torch.device = "cpu"):
        from app.asr import WhisperASR

        try:
            self.asr = WhisperASR.from_pretrained(path_or_hub_id, device=device)
        except (FileNotFoundError, OSError, ValueError) as error:
            raise MeterUnavailable(f"cannot load the Whisper ASR {path_or_hub_id}: {error}") from None
        self.name = f"whisper:{path_or_hub_id}"
        self.language = language

    def transcribe(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> str:
        return self.asr.transcribe(wav, sample_rate, self.language)


def transcribe_all(asr: ASRMeter, clips: Sequence[tuple[np.ndarray | torch.Tensor, int]]) -> list[str]:
    """[(mono waveform [T], sample rate)] -> what `asr` heard in each: by its `transcribe_many` where it
    has one (pocketsphinx: in parallel processes), else clip by clip."""
    many = getattr(asr, "transcribe_many", None)
    return many(clips) if many is not None else [asr.transcribe(wav, rate) for wav, rate in clips]


def load_asr(spec: str, language: str = "en-us", device: str | torch.device = "cpu") -> ASRMeter:
    """"pocketsphinx", or a Whisper directory / hub id (e.g. openai/whisper-base). Raises MeterUnavailable."""
    if spec == "pocketsphinx":
        if not language.lower().startswith("en"):
            raise MeterUnavailable(f"pocketsphinx's bundled model is English only, not {language}; "
                                   "pass a Whisper model instead (--asr openai/whisper-base)")
        return PocketSphinxASR()
    return WhisperMeter(spec, language, device)


# -- speaker meters -------------------------------------------------------------------------------------


class ResemblyzerSpeaker:
    """Resemblyzer's GE2E speaker encoder (256-dim, bundled with the package): offline and fast.

    Its embeddings are positive-leaning, so even different voices score 0.5-0.8: compare the
    similarity to the prompt's voice with the similarity to other voices, not with zero.
    """

    name = "resemblyzer"

    def __init__(self, device: str | torch.device = "cpu") -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation notice
                from resemblyzer import VoiceEncoder, preprocess_wav
        except ImportError as error:
            raise _missing("resemblyzer", error, " 'setuptools<81'") from None
        self.encoder = VoiceEncoder(device=str(device), verbose=False)
        self._preprocess = preprocess_wav

    def embed(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        audio = _mono_at(wav, sample_rate, METER_RATE)
        voiced = self._preprocess(audio, source_sr=METER_RATE)  # loudness-normalized, long silences removed
        if len(voiced) < MIN_VOICED_SECONDS * METER_RATE:  # (nearly) no voice found: embed what there is
            voiced = audio
        if not np.abs(voiced).max(initial=0.0) > 0:
            raise ValueError("the waveform is silent: it has no voice to embed")
        return unit(self.encoder.embed_utterance(voiced.astype(np.float32)))


class XVectorSpeaker:
    """A transformers x-vector model (`AutoModelForAudioXVector`: WavLM, wav2vec 2.0, UniSpeech-SAT),
    e.g. microsoft/wavlm-base-plus-sv, from a local directory or a hub id."""

    def __init__(self, path_or_hub_id: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        try:
            self.features = AutoFeatureExtractor.from_pretrained(str(path_or_hub_id))
            self.model = AutoModelForAudioXVector.from_pretrained(str(path_or_hub_id)).to(device).eval()
        except (OSError, ValueError, KeyError) as error:
            raise MeterUnavailable(f"cannot load a speaker-verification (x-vector) model from {path_or_hub_id}: "
                                   f"{error}; give a directory or a hub id such as microsoft/wavlm-base-plus-sv"
                                   ) from None
        self.name = f"xvector:{path_or_hub_id}"
        self.device = torch.device(device)

    @torch.inference_mode()
    def embed(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        rate = int(self.features.sampling_rate)
        inputs = self.features([_mono_at(wav, sample_rate, rate)], sampling_rate=rate, return_tensors="pt")
        embedding = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).embeddings[0]  # [D]
        return unit(embedding.float().cpu().numpy())


def load_speaker(spec: str, device: str | torch.device = "cpu") -> SpeakerMeter:
    """"resemblyzer", or an x-vector model directory / hub id. Raises MeterUnavailable."""
    if spec == "resemblyzer":
        return ResemblyzerSpeaker(device)
    return XVectorSpeaker(spec, device)
