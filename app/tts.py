"""Synthesis: text + a voice prompt -> speech, with the exported model directory.

    tts = TTS.from_pretrained("runs/lm/model")                  # codec/, ar/, nar/, text/
    wav, sr = tts.synthesize("Hello there.", "me.wav")            # float32 [T], the codec's rate
    wav, sr = tts.synthesize("Hello there.", "me.wav", prompt_text="What I said in me.wav.")
    wav, sr = synthesize("Hello there.", "me.wav", model="runs/lm/model")    # one-shot, cached

The path of one call:

1. the prompt is cleaned (app/prompt.py) and encoded by the codec into a `Voice` (or a saved
   preset is loaded, app/voice.py);
2. the text is split into chunks, about a sentence each (app/chunking.py);
3. each chunk becomes one text sequence, in one of the two ways the models were trained on
   (data/lm_data.py): with the prompt's transcript, VALL-E's continuation
   `[<lang> <bos> prompt phonemes | chunk phonemes <eos>]` ("transcribed" prompts); without it,
   `[<lang> <bos> chunk phonemes <eos>]` ("speaker" prompts);
4. the AR model writes codebook 1 for every chunk x `best_of` candidates in batches, each
   item from its own generator seeded from (seed, chunk, candidate): the same seed gives the
   same audio, whatever the batch; lengths are bounded by `lm.generation.length_limits`;
5. the scorers pick one candidate per chunk (app/scoring.py); the NAR model fills the other
   codebooks and the codec decodes them, block by block (app/streaming.py), with the end of
   the prompt as the first block's left context;
6. chunks are trimmed of silence at their ends, faded in and out over 10 ms, and joined
   with the pause each chunk asks for (0.3 s between sentences, 0.6 s between paragraphs).

`TTS.stream` runs the same path one chunk at a time and yields each block's audio as soon as
the AR model has written the frames its window needs, so its concatenation is `synthesize`'s
audio:

    for piece in tts.stream("Hello there. How are you?", "me.wav"):
        play(piece)                                                 # float32, tts.sample_rate
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from app import bundled
from app.chunking import MAX_CHARS, Chunk, split_text
from app.prompt import prepare_prompt
from app.scoring import Candidate, Scorer, asr_scorer, logprob_scorer, pick_best, scorers_by_name
from app.streaming import EdgeTrimmer, block_bounds
from app.voice import Voice, VoiceError, load_voice
from codec.interface import Codec
from codec.loading import load_codec
from data.frontend import VOCAB_FILE, TextFrontend
from data.lm_data import join_prompt_transcript, prompt_boundary
from data.normalize import EmptyTextError
from data.pretrained import CONFIG_FILE, WEIGHTS_FILE, resolve_pretrained
from lm.ar import ARModel
from lm.generation import ARResult, generate_ar, generate_nar, iter_ar, length_limits
from lm.nar import NARModel
from lm.pretrained import text_vocab_identity
from lm.sampling import SamplingConfig

DEFAULT_SAMPLING = SamplingConfig(temperature=1.0, top_k=0, top_p=0.9)
BATCH_SIZE = 16  # AR items (chunks x candidates), or NAR blocks, per batch
# A chunk is rendered in blocks (app/streaming.py): the first FIRST_BLOCK_SECONDS, then BLOCK_SECONDS at a
# time; each block's NAR and decoder passes see CONTEXT_SECONDS before it (the prompt's end before the first
# block) and LOOKAHEAD_SECONDS after it. A stream's first audio waits for FIRST_BLOCK + LOOKAHEAD of frames.
FIRST_BLOCK_SECONDS = 0.2
BLOCK_SECONDS = 1.0
CONTEXT_SECONDS = 1.0
LOOKAHEAD_SECONDS = 0.3
# The parts of an exported model, and a file each must hold.
MODEL_PARTS = {"codec": CONFIG_FILE, "ar": WEIGHTS_FILE, "nar": WEIGHTS_FILE, "text": VOCAB_FILE}


@dataclass
class Segment:
    """One chunk of the text as it was spoken."""

    chunk: Chunk
    candidates: list[Candidate]
    scores: list[dict[str, float]]  # per candidate: each scorer's score and the weighted "total"
    best: int  # index of the chosen candidate
    wav: np.ndarray  # float32 [T]: the chosen candidate, trimmed and faded

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.best]


@dataclass
class Synthesis:
    wav: np.ndarray  # float32 [T]
    sample_rate: int
    voice: Voice
    segments: list[Segment] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.wav) / self.sample_rate


class TTS:
    """The codec, the two language models and the text front-end of one exported model."""

    def __init__(self, codec: Codec, ar: ARModel, nar: NARModel, frontend: TextFrontend, *,
                 asr: Any = None, scorers: Sequence[Scorer] | None = None, device: str | torch.device = "cpu",
                 default_voice: str | Path | None = None):
        """default_voice: the preset that speaks when a call gives neither a prompt nor a voice (the
        bundled model's own; None: such a call is an error)."""
        self.device = torch.device(device)
        self.default_voice = default_voice
        self.codec = codec.to(self.device).eval()
        self.ar = ar.to(self.device).eval()
        self.nar = nar.to(self.device).eval()
        self.frontend = frontend
        self.asr = asr
        self.text_vocab = text_vocab_identity(frontend.vocab.to_dict())
        if scorers is None:
            scorers = [logprob_scorer()] + ([asr_scorer(asr)] if asr is not None else [])
        self.scorers = list(scorers)
        self._named_scorers: dict[tuple[str, str], list[Scorer]] = {}  # "asr,speaker" -> loaded once

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path | None = None, device: str | torch.device = "cpu", *,
                        codec: str | Path | None = None, asr: Any = None) -> "TTS":
        """Load a model directory (codec/, ar/, nar/, text/ as recipes/train_lm.py exports it) or a hub id;
        None loads the model bundled with Echo (app/bundled.py), whose default voice then speaks
        when a call gives no prompt.

        codec: another codec directory or hub id (e.g. facebook/encodec_24khz) instead of
            the model's codec/; it must be the one the models were trained on.
        asr: a Whisper directory or hub id (or a loaded app.asr.WhisperASR): it transcribes
            prompts given without prompt_text, and scores best-of-N candidates.
        """
        default_voice = None
        if path_or_hub_id is None:
            path_or_hub_id = bundled.default_model_dir()
            default_voice = bundled.default_voice() if codec is None else None
        model_dir = resolve_pretrained(path_or_hub_id, [f"{part}/*" for part in MODEL_PARTS], what="model",
                                       hint="recipes/train_lm.py exports one into <run_dir>/model (pass --codec "
                                            "CODEC_DIR to include the codec)")
        missing = [f"{part}/{name}" for part, name in MODEL_PARTS.items()
                   if not (part == "codec" and codec is not None) and not (model_dir / part / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{model_dir} is not a complete Echo model directory: {', '.join(missing)} missing. An exported "
                "model holds codec/, ar/, nar/ and text/; recipes/train_lm.py writes codec/ when given --codec"
            )
        frontend = TextFrontend.from_pretrained(model_dir / "text")
        vocab = text_vocab_identity(frontend.vocab.to_dict())
        codec_model = load_codec(codec if codec is not None else model_dir / "codec")
        ar = ARModel.from_pretrained(model_dir / "ar", expect_codec=codec_model.identity, expect_text_vocab=vocab,
                                     device=device)
        nar = NARModel.from_pretrained(model_dir / "nar", expect_codec=codec_model.identity, expect_text_vocab=vocab,
                                       device=device)
        if isinstance(asr, (str, Path)):
            from app.asr import WhisperASR

            asr = WhisperASR.from_pretrained(asr, device=device)
        return cls(codec_model, ar, nar, frontend, asr=asr, device=device, default_voice=default_voice)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    # -- voices -------------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare_voice(self, prompt_wav: Any, prompt_text: str | None = None, language: str = "en-us") -> Voice:
        """A voice prompt (a path, or (waveform, sample_rate)) -> a Voice; raises app.prompt.PromptError.

        Without `prompt_text`, the ASR model (when given) transcribes the prompt; without either,
        the voice is used without a transcript. A transcript of a recording that had to be cropped
        to its best span no longer matches it: it is dropped (with a warning) or re-transcribed.
        """
        prompt = prepare_prompt(prompt_wav, self.sample_rate)
        if prompt_text is not None and not prompt_text.strip():
            prompt_text = None
        if prompt_text is not None and prompt.cropped:
            warnings.warn(f"the voice prompt was {prompt.original_duration:.1f} s long and was cut to its best "
                          f"{prompt.duration:.1f} s, which prompt_text no longer matches: "
                          + ("transcribing the cut instead" if self.asr is not None else "it is not used"),
                          stacklevel=2)
            prompt_text = None
        if prompt_text is None and self.asr is not None:
            prompt_text = self.asr.transcribe(prompt.wav, prompt.sample_rate, language) or None
        codes = self.codec.encode(prompt.wav.to(self.device)[None, None])[0]  # [K, P]
        prompt_ids = None
        if prompt_text is not None:
            try:
                prompt_ids = self._prompt_ids(prompt_text, language)
            except EmptyTextError:
                warnings.warn(f"the prompt transcript {prompt_text!r} has no words to speak; it is not used",
                              stacklevel=2)
                prompt_text = None
        return Voice(codes=codes, codec=self.codec.identity, language=language, prompt_text=prompt_text,
                     prompt_ids=prompt_ids, text_vocab=self.text_vocab if prompt_ids is not None else None,
                     source=prompt.source, metadata={"original_duration": round(prompt.original_duration, 3)})

    def load_voice(self, name_or_path: str | Path) -> Voice:
        """A preset saved by `Voice.save` (a file, or the name of a bundled voice), checked against this
        model's codec."""
        return load_voice(bundled.find_voice(name_or_path), expect_codec=self.codec.identity)

    def _prompt_ids(self, prompt_text: str, language: str) -> list[int]:
        return self.frontend.encode(prompt_text, language, add_bos_eos=False)[1:]  # without the language tag

    def _voice_prompt_ids(self, voice: Voice) -> list[int] | None:
        """The voice's transcript ids in this model's vocabulary (re-encoded if the preset's differs)."""
        if voice.prompt_text is None:
            return None
        if voice.text_vocab == self.text_vocab and voice.prompt_ids is not None:
            return list(voice.prompt_ids)
        return self._prompt_ids(voice.prompt_text, voice.language)

    # -- synthesis ----------------------------------------------------------------------------

    def synthesize(self, text: str, prompt_wav: Any = None, prompt_text: str | None = None, *,
                   voice: Voice | str | Path | None = None, seed: int = 0,
                   sampling: SamplingConfig = DEFAULT_SAMPLING, best_of: int = 1, language: str = "en-us",
                   scorers: Sequence[Scorer] | str | None = None, max_chars: int = MAX_CHARS,
                   batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, int]:
        """Speak `text` in the voice of `prompt_wav` (or of a `voice` preset) -> (float32 [T], sample_rate).

        prompt_wav: a path, or (waveform, sample_rate); prompt_text: what it says, if known.
        seed: the same seed gives the same audio. best_of: candidates per chunk; `scorers`
        (default `self.scorers`) pick one: Scorers, or names such as "asr,speaker" (the ASR and
        speaker models are loaded once, see app.scoring.scorers_by_name). Raises PromptError,
        VoiceError or ValueError.
        """
        result = self.generate(text, prompt_wav, prompt_text, voice=voice, seed=seed, sampling=sampling,
                               best_of=best_of, language=language, scorers=scorers, max_chars=max_chars,
                               batch_size=batch_size)
        return result.wav, result.sample_rate

    @torch.inference_mode()
    def generate(self, text: str, prompt_wav: Any = None, prompt_text: str | None = None, *,
                 voice: Voice | str | Path | None = None, seed: int = 0,
                 sampling: SamplingConfig = DEFAULT_SAMPLING, best_of: int = 1, language: str = "en-us",
                 scorers: Sequence[Scorer] | str | None = None, max_chars: int = MAX_CHARS,
                 batch_size: int = BATCH_SIZE) -> Synthesis:
        """`synthesize`, returning every chunk's candidates and scores too (a Synthesis)."""
        _check_settings(seed, best_of, batch_size)
        request = self._request(text, self._resolve_voice(prompt_wav, prompt_text, voice, language), seed, language,
                                max_chars)
        return self._generate([request], sampling, best_of, scorers, batch_size)[0]

    @torch.inference_mode()
    def generate_batch(self, texts: Sequence[str], prompt_wavs: Any = None, prompt_texts: Any = None, *,
                       voices: Any = None, seeds: int | Sequence[int] = 0,
                       sampling: SamplingConfig = DEFAULT_SAMPLING, best_of: int = 1, language: str = "en-us",
                       scorers: Sequence[Scorer] | str | None = None, max_chars: int = MAX_CHARS,
                       batch_size: int = BATCH_SIZE) -> list[Synthesis]:
        """Many texts in one call: their sentences share the AR and NAR batches -> one Synthesis per text.

        The voices are one prompt (or preset) for every text, or a list with one per text:
        `prompt_wavs` (paths or (waveform, sample_rate)) with optional `prompt_texts`, or `voices`.
        `seeds`: one for every text, or one per text. Text k sounds exactly as
        `generate(texts[k], ..., seed=seeds[k])` would (up to float rounding): each candidate draws
        from its own generator, whatever the batch.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("generate_batch needs at least one text")
        n = len(texts)
        seeds = [seeds] * n if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
        prompt_wavs, prompt_texts, voices = (_per_text(name, value, n) for name, value in
                                             (("prompt_wavs", prompt_wavs), ("prompt_texts", prompt_texts),
                                              ("voices", voices)))
        if len(seeds) != n:
            raise ValueError(f"seeds must be one integer or one per text ({n}), got {len(seeds)}")
        for seed in seeds:
            _check_settings(seed, best_of, batch_size)
        resolved: dict[tuple, Voice] = {}  # a prompt given once for every text is prepared once
        requests = []
        for k, text in enumerate(texts):
            key = (id(prompt_wavs[k]), prompt_texts[k], id(voices[k]))
            if key not in resolved:
                resolved[key] = self._resolve_voice(prompt_wavs[k], prompt_texts[k], voices[k], language)
            requests.append(self._request(text, resolved[key], seeds[k], language, max_chars))
        return self._generate(requests, sampling, best_of, scorers, batch_size)

    def synthesize_batch(self, texts: Sequence[str], prompt_wavs: Any = None, prompt_texts: Any = None,
                         **options) -> list[tuple[np.ndarray, int]]:
        """`generate_batch`, returning (float32 [T], sample_rate) per text."""
        return [(result.wav, result.sample_rate)
                for result in self.generate_batch(texts, prompt_wavs, prompt_texts, **options)]

    def _scorers(self, scorers: Sequence[Scorer] | str | None, language: str) -> list[Scorer]:
        if scorers is None:
            return list(self.scorers)
        if isinstance(scorers, str):
            key = (scorers, language)
            if key not in self._named_scorers:
                self._named_scorers[key] = scorers_by_name(
                    scorers, asr=self.asr if self.asr is not None else "pocketsphinx", language=language,
                    device=str(self.device))
            return self._named_scorers[key]
        return list(scorers)

    def _request(self, text: str, voice: Voice, seed: int, language: str, max_chars: int) -> _Request:
        chunks = _chunks(text, max_chars)
        ids, prompt_text_length = self._texts([chunk.text for chunk in chunks], voice, language)
        return _Request(voice, chunks, ids, prompt_text_length, seed, language)

    def _generate(self, requests: list[_Request], sampling: SamplingConfig, best_of: int,
                  scorers: Sequence[Scorer] | str | None, batch_size: int) -> list[Synthesis]:
        scorers = self._scorers(scorers, requests[0].language)
        needs_audio = any(scorer.needs_audio for scorer in scorers)
        # (request, chunk, candidate), longest texts first so that batches pad little
        items = [(r, i, j) for r in requests for i in range(len(r.chunks)) for j in range(best_of)]
        items.sort(key=lambda item: -len(item[0].texts[item[1]]))
        candidates = {(id(r), i): [None] * best_of for r in requests for i in range(len(r.chunks))}
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            for (r, i, j), candidate in zip(batch, self._write_codebook1(batch, sampling)):
                candidate.text, candidate.language = r.chunks[i].text, r.language
                candidates[id(r), i][j] = candidate
        owner = {id(c): r for r in requests for i in range(len(r.chunks)) for c in candidates[id(r), i]}

        if needs_audio:  # every candidate is heard before choosing
            self._complete([(c, owner[id(c)]) for group in candidates.values() for c in group], batch_size)
            decoded = {id(r.voice): self._decode_voice(r.voice) for r in requests}
            for group in candidates.values():
                for candidate in group:
                    candidate.prompt_wav = decoded[id(owner[id(candidate)].voice)]
        choices = {key: pick_best(group, scorers) for key, group in candidates.items()}
        if not needs_audio:  # only the winners go through the NAR and the codec
            winners = [(candidates[key][best], owner[id(candidates[key][best])]) for key, (best, _) in choices.items()]
            self._complete(winners, batch_size)

        results = []
        for r in requests:
            segments = []
            for i, chunk in enumerate(r.chunks):
                group, (best, scores) = candidates[id(r), i], choices[id(r), i]
                trimmer = EdgeTrimmer(self.sample_rate)
                wav = np.concatenate([trimmer.push(group[best].wav), trimmer.finish()])
                segments.append(Segment(chunk, group, scores, best, wav))
            results.append(Synthesis(self._join(segments), self.sample_rate, r.voice, segments))
        return results

    @torch.inference_mode()
    def stream(self, text: str, prompt_wav: Any = None, prompt_text: str | None = None, *,
               voice: Voice | str | Path | None = None, seed: int = 0, sampling: SamplingConfig = DEFAULT_SAMPLING,
               language: str = "en-us", max_chars: int = MAX_CHARS) -> Iterator[np.ndarray]:
        """`synthesize`, as float32 audio chunks yielded while the AR model is still writing.

        Their concatenation is `synthesize(...)`'s audio for the same arguments (one candidate per
        sentence: choosing the best of several needs them all first). The first audio comes once
        FIRST_BLOCK_SECONDS + LOOKAHEAD_SECONDS of speech are written; then a block at a time, each
        sentence's pause, the next sentence. Bad input raises at the first `next()`; closing the
        generator stops the work.
        """
        _check_settings(seed, 1, 1)
        request = self._request(text, self._resolve_voice(prompt_wav, prompt_text, voice, language), seed, language,
                                max_chars)
        first, size = self._block_frames()
        lookahead = round(LOOKAHEAD_SECONDS * self.frame_rate)
        for i, chunk in enumerate(request.chunks):
            trimmer = EdgeTrimmer(self.sample_rate)
            args, kwargs = self._ar_inputs([(request, i, 0)], sampling)
            steps = iter_ar(*args, **kwargs)
            start, written = 0, 0
            while True:
                try:
                    progress = next(steps)
                except StopIteration as stop:
                    result: ARResult = stop.value
                    break
                written = int(progress.lengths[0])
                while written >= (end := first if start == 0 else start + size) + lookahead:
                    # this block's window is complete: render it now
                    codes1 = progress.codes[0, :written].cpu()
                    _, wav = self._render_blocks([(codes1, request, i, start, end)])[0]
                    start = end
                    if (out := trimmer.push(wav)).size:
                        yield out
            codes1 = result.codes[0, : int(result.lengths[0])].cpu()
            rest = [(codes1, request, i, s, e) for s, e in block_bounds(len(codes1), first, size) if s >= start]
            for _, wav in self._render_blocks(rest):
                if (out := trimmer.push(wav)).size:
                    yield out
            if (out := trimmer.finish()).size:
                yield out
            if i < len(request.chunks) - 1:
                yield np.zeros(int(round(chunk.pause * self.sample_rate)), dtype=np.float32)

    @torch.inference_mode()
    def complete(self, text: str, codes1: torch.Tensor, voice: Voice, language: str = "en-us") -> np.ndarray:
        """The NAR model and the decoder on a given codebook 1 [T] -> float32 audio [T * hop].

        What a synthesis of `text` (one chunk) would sound like if the AR model wrote exactly
        `codes1`: with a recording's own codebook 1, evaluation tells the AR model's share of the
        errors from the NAR model's and the codec's.
        """
        if codes1.dim() != 1:
            raise ValueError(f"codes1 must be one item's codebook 1 [T], got shape {tuple(codes1.shape)}")
        ids, prompt_text_length = self._texts([text], voice, language)
        request = _Request(voice, [Chunk(text, 0.0)], ids, prompt_text_length, 0, language)
        candidate = Candidate(chunk=0, text=text, seed=0, codes1=codes1.long().cpu(), logprob=0.0, finished=True,
                              language=language, sample_rate=self.sample_rate)
        self._complete([(candidate, request)], batch_size=BATCH_SIZE)
        return candidate.wav

    def _resolve_voice(self, prompt_wav: Any, prompt_text: str | None, voice: Voice | str | Path | None,
                       language: str) -> Voice:
        if voice is not None:
            if prompt_wav is not None or prompt_text is not None:
                raise ValueError("give either a voice preset or prompt_wav (with its prompt_text), not both")
            if isinstance(voice, (str, Path)):
                return self.load_voice(voice)
            if not isinstance(voice, Voice):
                raise VoiceError(f"voice must be a Voice or the path of a saved preset, got {type(voice).__name__}")
            voice.check_codec(self.codec.identity)
            return voice
        if prompt_wav is None:
            if prompt_text is None and self.default_voice is not None:
                return self.load_voice(self.default_voice)
            raise ValueError("Echo clones a voice: give prompt_wav (a recording of 3-10 s) or a voice preset")
        return self.prepare_voice(prompt_wav, prompt_text, language)

    def _texts(self, chunk_texts: list[str], voice: Voice, language: str) -> tuple[list[list[int]], int]:
        """One token sequence per chunk, and how many of its first tokens are the prompt's transcript.

        With a transcript: [<lang> <bos> prompt ... | chunk ... <eos>], the layout of "transcribed"
        prompts in training (data/lm_data.py); without: [<lang> <bos> chunk ... <eos>].
        """
        vocab = self.frontend.vocab
        encoded = self.frontend.encode_batch(chunk_texts, language)  # [<lang>, <bos>, ..., <eos>] each
        prompt_ids = self._voice_prompt_ids(voice)
        if not prompt_ids:
            return encoded, 0
        prompt_text = [vocab.language_id(language), vocab.bos_id, *prompt_ids, vocab.eos_id]
        joined = [join_prompt_transcript(prompt_text, ids, vocab) for ids in encoded]
        return [ids for ids, _ in joined], joined[0][1]

    def _ar_inputs(self, items: list[tuple[_Request, int, int]], sampling: SamplingConfig) -> tuple[tuple, dict]:
        """`iter_ar` / `generate_ar` arguments for (request, chunk, candidate) items -> (args, kwargs)."""
        device = self.device
        text, text_lengths = _pad([r.texts[i] for r, i, _ in items], self.frontend.vocab.pad_id, device)
        prompt, prompt_lengths = _pad_prompts([r.voice for r, _, _ in items], device)
        transcript = torch.tensor([r.prompt_text_length for r, _, _ in items], dtype=torch.long, device=device)
        low, high = length_limits(text_lengths, self.frame_rate, transcript)
        generators = [torch.Generator(device=device).manual_seed(derive_seed(r.seed, i, j)) for r, i, j in items]
        start = None
        if self.ar.config.duration_guided:
            # After a transcript the chunk's first frame reads the boundary before it, as in training.
            start = (transcript - len(prompt_boundary(self.frontend.vocab))).clamp(min=0)
        return (self.ar, text, text_lengths, prompt, prompt_lengths), dict(
            sampling=sampling, min_new_tokens=low, max_new_tokens=high, generator=generators, start_index=start)

    def _write_codebook1(self, items: list[tuple[_Request, int, int]], sampling: SamplingConfig) -> list[Candidate]:
        """Run the AR model on (request, chunk, candidate) items -> one Candidate each (codebook 1 only)."""
        args, kwargs = self._ar_inputs(items, sampling)
        result = generate_ar(*args, **kwargs)
        return [
            Candidate(chunk=i, text="", seed=derive_seed(r.seed, i, j), codes1=result.codes[b, : int(result.lengths[b])].cpu(),
                      alignment=None if result.alignment is None else result.alignment[b, : int(result.lengths[b])].cpu(),
                      logprob=float(result.logprob[b]), finished=bool(result.finished[b]), sample_rate=self.sample_rate)
            for b, (r, i, j) in enumerate(items)
        ]

    def _complete(self, jobs: list[tuple[Candidate, _Request]], batch_size: int) -> None:
        """Fill codebooks 2..K of each candidate and decode its audio, block by block (the blocks of all
        candidates go through the NAR model in batches)."""
        first, size = self._block_frames()
        blocks = [(c, (c.codes1, r, c.chunk, s, e)) for c, r in jobs for s, e in block_bounds(c.n_frames, first, size)]
        rendered: dict[int, list[tuple[torch.Tensor, np.ndarray]]] = {id(c): [] for c, _ in jobs}
        for start in range(0, len(blocks), batch_size):
            group = blocks[start:start + batch_size]
            for (candidate, _), block in zip(group, self._render_blocks([block for _, block in group])):
                rendered[id(candidate)].append(block)
        K = self.nar.config.n_q
        for c, _ in jobs:
            parts = rendered[id(c)]
            c.codes = torch.cat([codes for codes, _ in parts], 1) if parts else torch.zeros(K, 0, dtype=torch.long)
            c.wav = np.concatenate([wav for _, wav in parts]) if parts else np.zeros(0, dtype=np.float32)

    def _block_frames(self) -> tuple[int, int]:
        return max(1, round(FIRST_BLOCK_SECONDS * self.frame_rate)), max(1, round(BLOCK_SECONDS * self.frame_rate))

    def _render_blocks(self, blocks: list[tuple[torch.Tensor, _Request, int, int, int]],
                       ) -> list[tuple[torch.Tensor, np.ndarray]]:
        """Blocks (codebook 1 [n] written so far, request, chunk, start, end) -> (codes [K, end - start], audio).

        A block's window is its frames plus up to CONTEXT_SECONDS before and LOOKAHEAD_SECONDS after (as far as
        `n`): the NAR model fills codebooks 2..K on the window (all windows in one batch) and the decoder renders
        it, after the prompt's last CONTEXT_SECONDS for a chunk's first block; the block's part is kept. The
        decoder reads each codebook's expected code vector under the NAR model's distribution, not its most
        likely code: where the NAR is unsure of a residual code (most of the time, README: the error budget) the
        mean of its guesses keeps the voice that a wrong code spoils.
        """
        if not blocks:
            return []
        device, hop = self.device, self.codec.hop_length
        context, lookahead = round(CONTEXT_SECONDS * self.frame_rate), round(LOOKAHEAD_SECONDS * self.frame_rate)
        K = self.nar.config.n_q
        windows = [(max(0, s - context), min(len(codes1), e + lookahead)) for codes1, _, _, s, e in blocks]
        B = len(blocks)
        text, text_lengths = _pad([r.texts[i] for _, r, i, _, _ in blocks], self.frontend.vocab.pad_id, device)
        lengths = torch.tensor([hi - lo for lo, hi in windows], dtype=torch.long, device=device)
        codes1 = torch.zeros(B, int(lengths.max()), dtype=torch.long, device=device)
        for b, ((frames, *_), (lo, hi)) in enumerate(zip(blocks, windows)):
            codes1[b, : hi - lo] = frames[lo:hi].to(device)
        prompt, prompt_lengths = _pad_prompts([r.voice for _, r, _, _, _ in blocks], device, K)
        codes, probabilities = generate_nar(self.nar, text, text_lengths, prompt, prompt_lengths, codes1, lengths,
                                            return_probabilities=True)  # [B, K, W], [B, K, W, C]
        out = []
        for b, ((_, r, _, s, e), (lo, hi)) in enumerate(zip(blocks, windows)):
            window = probabilities[b, :, : hi - lo].to(device, torch.float32)  # [K, hi - lo, C]
            if lo == 0:  # a chunk's start follows the prompt's end
                tail = r.voice.codes.long().to(device)[:K, -context:] if context else window.new_zeros(K, 0).long()
                before = F.one_hot(tail, self.codec.codebook_size).float()  # [K, c, C]
            else:
                before = window[:, :0]
            wav = self.codec.decode_expected(torch.cat([before, window], 1)[None])[0, 0]
            offset = (before.shape[1] + s - lo) * hop
            out.append((codes[b, :, s - lo : e - lo].cpu(),
                        wav[offset : offset + (e - s) * hop].float().cpu().numpy().astype(np.float32)))
        return out

    def _decode_voice(self, voice: Voice) -> np.ndarray:
        return self.codec.decode(voice.codes.long().to(self.device)[None])[0, 0].float().cpu().numpy()

    def _join(self, segments: list[Segment]) -> np.ndarray:
        parts = []
        for k, segment in enumerate(segments):
            parts.append(segment.wav)
            if k < len(segments) - 1:
                parts.append(np.zeros(int(round(segment.chunk.pause * self.sample_rate)), dtype=np.float32))
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)


@dataclass
class _Request:
    """One text to speak in one voice, as the models read it: token ids per chunk (see `TTS._texts`)."""

    voice: Voice
    chunks: list[Chunk]
    texts: list[list[int]]
    prompt_text_length: int
    seed: int
    language: str


def _check_settings(seed: Any, best_of: int, batch_size: int) -> None:
    if best_of < 1 or batch_size < 1:
        raise ValueError(f"best_of and batch_size must be at least 1, got {best_of} and {batch_size}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def _per_text(name: str, value: Any, n: int) -> list[Any]:
    """One value for every text, or a list of one per text."""
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"{name} must be one value or a list of one per text ({n}), got {len(value)}")
        return value
    return [value] * n


def _pad_prompts(voices: list[Voice], device: torch.device, n_q: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The voices' codes -> (LongTensor [B, K, P] zero-padded at the end, lengths [B])."""
    lengths = torch.tensor([v.codes.shape[1] for v in voices], dtype=torch.long)
    K = n_q or voices[0].codes.shape[0]
    out = torch.zeros(len(voices), K, int(lengths.max()), dtype=torch.long)
    for b, voice in enumerate(voices):
        out[b, :, : voice.codes.shape[1]] = voice.codes[:K].long()
    return out.to(device), lengths.to(device)


def _chunks(text: str, max_chars: int) -> list[Chunk]:
    """The chunks of `text` that have something to say; raises EmptyTextError when none has."""
    chunks = [chunk for chunk in split_text(text, max_chars) if any(ch.isalnum() for ch in chunk.text)]
    if not chunks:
        raise EmptyTextError(f"there is nothing to say in {text!r}; pass a sentence with words, e.g. 'Hello there.'")
    return chunks


def derive_seed(seed: int, chunk: int, candidate: int) -> int:
    """The generator seed of one candidate of one chunk: stable across runs, machines and batch layouts."""
    digest = hashlib.blake2b(f"echo:{seed}:{chunk}:{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (LongTensor [B, N] padded with pad_id, lengths [B])."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for b, s in enumerate(sequences):
        out[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device), lengths.to(device)


# -- the one-shot function ---------------------------------------------------------------------------

_LOADED: dict[tuple[str, str], TTS] = {}
_LOCK = threading.Lock()


def load_tts(model: str | Path | None = None, device: str | torch.device = "cpu") -> TTS:
    """`TTS.from_pretrained(model, device)`, loaded once per (directory, device) and kept; None: the bundled model."""
    key = (str(Path(model).resolve()) if model is not None else None, str(torch.device(device)))
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = TTS.from_pretrained(model, device)
        return _LOADED[key]


def synthesize(text: str, prompt_wav: Any = None, prompt_text: str | None = None, *,
               model: str | Path | TTS | None = None, voice: Voice | str | Path | None = None, seed: int = 0,
               sampling: SamplingConfig = DEFAULT_SAMPLING, best_of: int = 1, language: str = "en-us",
               device: str | torch.device = "cpu") -> tuple[np.ndarray, int]:
    """One call: speak `text` in the voice of `prompt_wav` (or of a `voice` preset: a file or a bundled
    voice's name) with the model directory `model` (loaded once, then reused; None: the bundled model,
    whose default voice speaks when no prompt is given) -> (float32 [T], sample_rate). See `TTS.synthesize`."""
    tts = model if isinstance(model, TTS) else load_tts(model, device)
    return tts.synthesize(text, prompt_wav, prompt_text, voice=voice, seed=seed, sampling=sampling,
                          best_of=best_of, language=language)
