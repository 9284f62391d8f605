"""Speech recognition for synthesis: transcribe a voice prompt, or score best-of-N candidates.

    asr = WhisperASR.from_pretrained("openai/whisper-base")      # a hub id or a local directory
    asr.transcribe(wav, 16000, language="en-us")                   # -> "What I said."
    tts = TTS.from_pretrained("runs/lm/model", asr="openai/whisper-base")

Whisper through transformers (`WhisperForConditionalGeneration` + `WhisperProcessor`). Audio
is resampled to the processor's rate (16 kHz); an eSpeak language code ("en-us") is passed
to Whisper as its base language ("en") when the checkpoint knows languages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data.audio import resample
from data.pretrained import resolve_pretrained

MAX_NEW_TOKENS = 128  # a prompt or a chunk is at most ~15 s: far fewer tokens than this
# What a hub snapshot needs: the configs, the tokenizer (vocab.json, merges.txt, ...), the safetensors weights.
WHISPER_FILES = ("*.json", "*.txt", "*.safetensors")


class WhisperASR:
    def __init__(self, model, processor, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | torch.device = "cpu") -> "WhisperASR":
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        directory = resolve_pretrained(path_or_hub_id, WHISPER_FILES, what="Whisper model",
                                       hint="give a directory or a hub id such as openai/whisper-base")
        try:
            processor = WhisperProcessor.from_pretrained(str(directory))
            model = WhisperForConditionalGeneration.from_pretrained(str(directory))
        except OSError as error:
            raise FileNotFoundError(f"cannot load a Whisper model from {path_or_hub_id}: {error}") from None
        return cls(model, processor, device)

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def transcribe(self, wav: np.ndarray | torch.Tensor, sample_rate: int, language: str | None = None) -> str:
        """wav [T] (mono) -> its transcript."""
        return self.transcribe_batch([wav], sample_rate, language)[0]

    @torch.no_grad()
    def transcribe_batch(self, wavs: Sequence[np.ndarray | torch.Tensor], sample_rate: int,
                         language: str | None = None) -> list[str]:
        """Each wav [T] at `sample_rate` -> its transcript, in one batch."""
        if not wavs:
            return []
        audio = []
        for wav in wavs:
            mono = torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1)  # [1, T]
            audio.append(resample(mono, sample_rate, self.sample_rate)[0].numpy())
        features = self.processor.feature_extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs = features.input_features.to(self.device, self.model.dtype)
        config = self.model.generation_config
        limit = min(MAX_NEW_TOKENS, self.model.config.max_target_positions // 2)
        kwargs: dict = {"max_new_tokens": limit}
        whisper_language = (language or "").split("-")[0].lower()
        if whisper_language and getattr(config, "lang_to_id", None):
            if f"<|{whisper_language}|>" in config.lang_to_id:
                kwargs.update(language=whisper_language, task="transcribe")
        tokens = self.model.generate(inputs, **kwargs)
        return [text.strip() for text in self.processor.batch_decode(tokens, skip_special_tokens=True)]
