"""The built-in synthetic corpus: English read by eSpeak NG (and flite, when installed) voices.

It lets the whole pipeline (codec, language models, voice cloning) run anywhere with no
download. Every speaker is a fixed combination of

- a voice: an eSpeak NG variant (formant set, voicing, flutter: m1-m7, f1-f5, klatt, Alex, ...)
  with an English accent (en-us, en-us-nyc, en (British), en-gb-x-rp, en-gb-scotland, en-029,
  Lancaster, West Midlands), or a flite voice (awb, slt, rms, kal16);
- prosody: mean F0 (males 85-155 Hz, females 160-255 Hz, spread evenly over each gender),
  intonation range and speaking rate;
- timbre: a vocal-tract-length warp (every frequency, formants included, times `warp`), a
  spectral tilt and a loudness.

Speaker `spk{i:03d}` is male for even i and female for odd i; with flite, every third speaker
(i % 3 == 2) is instead one of flite's voices (`FLITE_VOICES`, in turn) with its own pitch,
rate, warp and tilt, so that a third of the corpus, and of the held-out voices, sound like the
natural voices that an offline ASR understands. Voices are dealt out
so that no two eSpeak speakers share an (accent, variant) pair. The settings are a pure
function of (num_speakers, seed, use_flite) and are saved in `speakers.json`, together with
the eSpeak pitch parameter calibrated to reach the target F0 and the F0 measured.

Layout of `out_dir`: `speakers.json`, `audio/<speaker>/<speaker>_<k:05d>.flac`, 16-bit mono
at 24 kHz (eSpeak speaks at 22050 Hz, flite at 16 kHz; both are resampled, which the warp
rides on), and `phoneme_timings.jsonl`: when each phoneme of every eSpeak utterance starts and
ends in its file, as eSpeak NG reports them (data/phoneme_timings.py; flite's utterances have
none). Each speaker reads its own sentences (no sentence is read twice) in order, stopping
at the utterance that brings it closest to `hours * 3600 / num_speakers` seconds. The same
arguments give the same texts and the same audio bytes, however many workers; a bigger `hours`
extends a corpus, and an interrupted build resumes, keeping the files already written. An
utterance whose file exists but whose timings do not (a corpus built before they were recorded)
is synthesized again for its timings only: the same bytes, so the file is left as it is.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from data.audio import f0_contour, normalize_loudness, resample, speech_bounds, write_audio
from data.espeak import PhonemeEvent, VoiceSettings, espeak_synthesizer, espeak_variants
from data.manifest import Utterance
from data.phoneme_timings import PAUSE, TIMINGS_FILE, PhonemeTiming, UtteranceTimings, read_timings, write_timings
from data.pretrained import write_file
from data.sentences import generate_sentences

logger = logging.getLogger(__name__)

SYNTHETIC_SAMPLE_RATE = 24000
SYNTHETIC_QUICKSTART_HOURS = 4.0  # 72 speakers x 200 s, about 5250 utterances: builds in about 80 s on 2 cores
DEFAULT_NUM_SPEAKERS = 72  # the quickstart holds 12 of them out for zero-shot evaluation
LANGUAGE = "en-us"

# eSpeak NG variants that sound like plausible people (no whisper, croak, robot or echo-chamber voices).
MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Gene", "Jacky", "Mike", "Michael",
    "Reed", "adam", "antonio", "benjamin", "david", "edward", "iven3", "klatt", "klatt3", "max", "miguel",
    "paul", "quincy", "robert", "travis", "victor", "Denis", "Lee", "boris", "sandro", "kaukovalta", "ed",
    "Storm", "norbert",
)  # fmt: skip
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "linda", "steph",
    "steph2", "shelby",
)  # fmt: skip
# The cycle of accents speakers are given: American English (the text front-end's) four times in eleven.
ACCENTS = (
    "en-us", "en", "en-us", "en-gb-scotland", "en-us-nyc", "en-gb-x-rp", "en-us", "en-029", "en-gb-x-gbclan", "en-us",
    "en-gb-x-gbcwmd",
)  # fmt: skip
F0_RANGE = {"male": (85.0, 155.0), "female": (160.0, 255.0)}  # Hz, after the warp

# (voice, gender, accent); awb is a Scottish speaker, the others American. slt, flite's only
# female voice, comes twice in the cycle.
FLITE_VOICES = (
    ("awb", "male", "en-gb-scotland"),
    ("slt", "female", "en-us"),
    ("rms", "male", "en-us"),
    ("slt", "female", "en-us"),
    ("kal16", "male", "en-us"),
)
FLITE_SLOT_EVERY = 3  # speaker i is flite's when i % 3 == 2, going round FLITE_VOICES
FLITE_SAMPLE_RATE = 16000
FLITE_NATURAL_RATE = 155.0  # flite's own speed, in eSpeak words per minute
FLITE_IGNORES_F0 = ("rms",)  # its F0 model does not take int_f0_target_mean

ESPEAK_SAMPLE_RATE = 22050
ESPEAK_VOLUME = 55  # below the level at which the loudest variants clip; loudness is normalised afterwards
CALIBRATION_TEXT = "We were away in a valley where the rain and the wind were mild and mellow all year."
WARP_STEP_HZ = 250  # warped source rates are multiples of this, which keeps the resampling kernels small
MIN_SECONDS_PER_SENTENCE = 0.8  # no sentence is spoken faster; bounds how many a speaker can need


@dataclass(frozen=True)
class SyntheticSpeaker:
    id: str
    engine: str  # "espeak" or "flite"
    voice: str  # eSpeak "accent+variant" ("en-gb-scotland+m3") or a flite voice ("slt")
    gender: str  # "male" or "female"
    accent: str
    f0_target: float  # mean F0 aimed at, Hz
    rate: int  # speaking rate after the warp, eSpeak words per minute
    pitch_range: int  # eSpeak intonation range, 0-100 (flite: unused)
    warp: float  # vocal-tract-length factor: every frequency is multiplied by it, durations divided
    tilt: float  # spectral tilt: y[n] = x[n] + tilt * x[n-1] (> 0 darker, < 0 brighter)
    loudness: float  # LUFS
    espeak_pitch: int | None = None  # eSpeak pitch parameter that gives f0_target, set by calibration
    f0: float | None = None  # measured mean F0 of the finished voice, Hz, set by calibration

    def espeak_voice(self, pitch: int | None = None) -> VoiceSettings:
        """The eSpeak settings, with the rate raised or lowered so that after the warp it is `rate`."""
        pitch = pitch if pitch is not None else self.espeak_pitch
        return VoiceSettings(
            name=self.voice,
            rate=round(self.rate / self.warp),
            pitch=50 if pitch is None else pitch,
            pitch_range=self.pitch_range,
            volume=ESPEAK_VOLUME,
        )


def flite_available() -> bool:
    return shutil.which("flite") is not None


def plan_speakers(
    num_speakers: int = DEFAULT_NUM_SPEAKERS, seed: int = 0, use_flite: bool = False
) -> list[SyntheticSpeaker]:
    """The speakers' settings before calibration (no synthesis): a pure function of the arguments."""
    if num_speakers < 1:
        raise ValueError(f"num_speakers must be >= 1, got {num_speakers}")
    variants = _available_variants()
    engines_and_genders = [_slot(i, use_flite) for i in range(num_speakers)]
    for gender, names in variants.items():
        needed = sum(1 for engine, g in engines_and_genders if engine == "espeak" and g == gender)
        if needed > len(names) * len(set(ACCENTS)):
            raise ValueError(
                f"num_speakers={num_speakers} needs {needed} {gender} eSpeak voices, but only "
                f"{len(names) * len(set(ACCENTS))} distinct ones exist; ask for fewer speakers"
            )
    f0_strata = _f0_strata([g for _, g in engines_and_genders], seed)
    voices = _espeak_voices(engines_and_genders, variants, seed)
    speakers = []
    for i, (engine, gender) in enumerate(engines_and_genders):
        rng = np.random.default_rng([seed, i])
        rate, pitch_range = int(rng.integers(150, 196)), int(rng.integers(30, 81))
        warp, tilt, loudness = rng.uniform(0.93, 1.08), rng.uniform(-0.35, 0.35), rng.uniform(-26.0, -18.0)
        low, high = F0_RANGE[gender]
        stratum, count = f0_strata[i]
        f0_target = low * (high / low) ** ((stratum + rng.uniform()) / count)
        if engine == "flite":
            voice, _, accent = FLITE_VOICES[(i // FLITE_SLOT_EVERY) % len(FLITE_VOICES)]
        else:
            voice, accent = voices[i], voices[i].split("+")[0]
        native = FLITE_SAMPLE_RATE if engine == "flite" else ESPEAK_SAMPLE_RATE
        speakers.append(
            SyntheticSpeaker(
                id=f"spk{i:03d}",
                engine=engine,
                voice=voice,
                gender=gender,
                accent=accent,
                f0_target=round(float(f0_target), 1),
                rate=rate,
                pitch_range=pitch_range,
                warp=round(_quantize_warp(warp, native), 6),
                tilt=round(float(tilt), 3),
                loudness=round(float(loudness), 1),
            )
        )
    return speakers


def _slot(i: int, use_flite: bool) -> tuple[str, str]:
    """(engine, gender) of speaker i."""
    if use_flite and i % FLITE_SLOT_EVERY == FLITE_SLOT_EVERY - 1:
        return "flite", FLITE_VOICES[(i // FLITE_SLOT_EVERY) % len(FLITE_VOICES)][1]
    return "espeak", "male" if i % 2 == 0 else "female"


def _available_variants() -> dict[str, tuple[str, ...]]:
    installed = set(espeak_variants())
    if not installed:  # a system install whose data folder is unknown: trust the lists
        return {"male": MALE_VARIANTS, "female": FEMALE_VARIANTS}
    return {
        "male": tuple(v for v in MALE_VARIANTS if v in installed),
        "female": tuple(v for v in FEMALE_VARIANTS if v in installed),
    }


def _f0_strata(genders: list[str], seed: int) -> list[tuple[int, int]]:
    """(stratum, strata) per speaker: each gender's speakers get distinct equal slices of its F0 range, shuffled."""
    strata = [(0, 1)] * len(genders)
    for code, gender in enumerate(("male", "female")):
        members = [i for i, g in enumerate(genders) if g == gender]
        order = np.random.default_rng([seed, 1000 + code]).permutation(len(members))
        for i, stratum in zip(members, order):
            strata[i] = (int(stratum), len(members))
    return strata


def _espeak_voices(slots: list[tuple[str, str]], variants: dict[str, tuple[str, ...]], seed: int) -> dict[int, str]:
    """Give each eSpeak speaker a distinct (accent, variant) pair, cycling through the variants of its gender."""
    voices: dict[int, str] = {}
    for g, gender in enumerate(("male", "female")):
        order = np.random.default_rng([seed, 2000 + g]).permutation(len(variants[gender]))
        names = [variants[gender][k] for k in order]
        used: set[tuple[str, str]] = set()
        members = [i for i, (engine, sg) in enumerate(slots) if engine == "espeak" and sg == gender]
        for j, i in enumerate(members):
            variant = names[j % len(names)]
            a = (j + j // len(names)) % len(ACCENTS)
            while (variant, ACCENTS[a]) in used:
                a = (a + 1) % len(ACCENTS)
            used.add((variant, ACCENTS[a]))
            voices[i] = f"{ACCENTS[a]}+{variant}"
    return voices


def _quantize_warp(warp: float, native_rate: int) -> float:
    return WARP_STEP_HZ * round(native_rate * warp / WARP_STEP_HZ) / native_rate


def estimate_f0(wav: np.ndarray, sample_rate: int, fmin: float = 60.0, fmax: float = 450.0) -> float:
    """Median F0 in Hz over the voiced frames of `f0_contour`; 0 if none."""
    contour = f0_contour(wav, sample_rate, fmin, fmax)
    voiced = contour[~np.isnan(contour)]
    return float(np.median(voiced)) if voiced.size else 0.0


def calibrate_speaker(speaker: SyntheticSpeaker) -> SyntheticSpeaker:
    """Find the eSpeak pitch parameter that gives `f0_target` (after the warp); measure the F0 reached.

    flite speakers are only measured: flite takes the target F0 directly.
    """
    if speaker.engine == "flite":
        return replace(speaker, f0=round(estimate_f0(render(speaker, CALIBRATION_TEXT), SYNTHETIC_SAMPLE_RATE), 1))
    synthesizer = espeak_synthesizer()
    target = speaker.f0_target / speaker.warp  # what eSpeak itself must produce

    def f0_at(pitch: int) -> float:
        wav = synthesizer.synthesize(CALIBRATION_TEXT, speaker.espeak_voice(pitch))
        return estimate_f0(wav, synthesizer.sample_rate)

    pitch, f0 = 50, f0_at(50)
    if f0 <= 0:
        raise RuntimeError(f"{speaker.id} ({speaker.voice}) produced no voiced speech; check the eSpeak NG install")
    # eSpeak's pitch parameter scales F0 roughly exponentially (F0 x1.7 from 50 to 100); refine by one secant step.
    next_pitch = _clip_pitch(50 + 50 * math.log2(target / f0) / 0.75)
    if next_pitch != pitch:
        next_f0 = f0_at(next_pitch)
        slope = math.log2(max(next_f0, 1.0) / f0) / (next_pitch - pitch)
        pitch, f0 = next_pitch, next_f0
        if slope > 0:
            refined = _clip_pitch(pitch + math.log2(target / f0) / slope)
            if refined != pitch:
                pitch, f0 = refined, f0_at(refined)
    return replace(speaker, espeak_pitch=pitch, f0=round(f0 * speaker.warp, 1))


def _clip_pitch(pitch: float) -> int:
    return int(min(100, max(5, round(pitch))))


@dataclass(frozen=True)
class Rendering:
    audio: np.ndarray  # float32 [T] at the corpus rate
    phonemes: tuple[PhonemeTiming, ...] | None  # when each phoneme starts and ends in `audio`; None for flite


def render(speaker: SyntheticSpeaker, text: str, sample_rate: int = SYNTHETIC_SAMPLE_RATE) -> np.ndarray:
    """`text` in `speaker`'s voice: float32 [T] at `sample_rate`, silence trimmed to 0.1 s, loudness set."""
    return render_with_timings(speaker, text, sample_rate).audio


def render_with_timings(speaker: SyntheticSpeaker, text: str, sample_rate: int = SYNTHETIC_SAMPLE_RATE) -> Rendering:
    """`render`, with the phoneme timings of an eSpeak speaker (see `_timings`)."""
    events = None
    if speaker.engine == "flite":
        native_rate, wav = FLITE_SAMPLE_RATE, _flite(speaker, text)
    else:
        synthesizer = espeak_synthesizer()
        speech = synthesizer.speak(text, speaker.espeak_voice())
        native_rate, wav, events = synthesizer.sample_rate, speech.audio, speech.phonemes
    if wav.size == 0 or not np.any(wav):
        raise RuntimeError(f"{speaker.id} ({speaker.voice}) produced no audio for {text!r}")
    tilted = wav.copy()
    tilted[1:] += speaker.tilt * wav[:-1]
    # Reading the samples as if recorded at native_rate * warp and resampling scales every frequency by warp.
    warped_rate = WARP_STEP_HZ * round(native_rate * speaker.warp / WARP_STEP_HZ)
    out = resample(torch.from_numpy(tilted).unsqueeze(0), warped_rate, sample_rate)
    start, end = speech_bounds(out, sample_rate)  # trim the silence
    out = normalize_loudness(out[..., start:end], sample_rate, speaker.loudness)
    audio = out.squeeze(0).numpy().astype(np.float32)
    if events is None:
        return Rendering(audio, None)
    return Rendering(audio, _timings(events, wav.size / warped_rate, start / sample_rate, audio.size / sample_rate,
                                     warped_rate))


def _timings(events: Sequence[PhonemeEvent], spoken_seconds: float, trimmed_seconds: float, duration: float,
             warped_rate: int) -> tuple[PhonemeTiming, ...]:
    """eSpeak's phoneme events -> (phoneme, start, end) in seconds of the written audio.

    The tilt filter and the loudness gain move no sample. Reading eSpeak's samples at
    `warped_rate` puts its sample s at s / warped_rate seconds, and the resampler (a centred
    windowed sinc) adds no delay; the trim removes `trimmed_seconds` from the start. A phoneme
    ends where the next event starts, the last one where eSpeak's audio ends; times are clipped
    to the file, and what the trim removed entirely is dropped. Pauses ("" from eSpeak) are
    named PAUSE, and consecutive pauses are merged.
    """
    bounds = [e.sample / warped_rate - trimmed_seconds for e in events] + [spoken_seconds - trimmed_seconds]
    bounds = [min(max(t, 0.0), duration) for t in bounds]
    timings: list[PhonemeTiming] = []
    for event, start, end in zip(events, bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        name = event.phoneme or PAUSE
        if name == PAUSE and timings and timings[-1].phoneme == PAUSE:
            timings[-1] = PhonemeTiming(PAUSE, timings[-1].start, end)
        else:
            timings.append(PhonemeTiming(name, start, end))
    return tuple(timings)


def _flite(speaker: SyntheticSpeaker, text: str) -> np.ndarray:
    stretch = FLITE_NATURAL_RATE * speaker.warp / speaker.rate
    args = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={stretch:.4f}"]
    if speaker.voice not in FLITE_IGNORES_F0:
        args += ["--setf", f"int_f0_target_mean={speaker.f0_target / speaker.warp:.1f}"]
    with tempfile.TemporaryDirectory(prefix="echo-flite-") as tmp:
        text_path, wav_path = Path(tmp) / "text.txt", Path(tmp) / "speech.wav"
        text_path.write_text(text + "\n", encoding="utf-8")
        result = subprocess.run([*args, "-f", str(text_path), "-o", str(wav_path)], capture_output=True, timeout=120)
        if result.returncode != 0 or not wav_path.is_file():
            error = result.stderr.decode(errors="replace")
            raise RuntimeError(f"flite failed on {text!r} with voice {speaker.voice}: {error}")
        wav, rate = sf.read(str(wav_path), dtype="float32")
    if rate != FLITE_SAMPLE_RATE:
        raise RuntimeError(f"flite voice {speaker.voice} speaks at {rate} Hz; Echo expects {FLITE_SAMPLE_RATE} Hz")
    return wav


@dataclass(frozen=True)
class _SpeakerJob:
    speaker: SyntheticSpeaker
    sentences: list[str]
    seconds: float  # how much audio the speaker should end with
    out_dir: str
    sample_rate: int
    timings: dict[str, UtteranceTimings]  # the speaker's timings already on disk, by utterance id


def _build_speaker(job: _SpeakerJob) -> tuple[list[Utterance], list[UtteranceTimings]]:
    """Speak the job's sentences in order while that brings the total closer to `seconds`; reuse valid files.

    Returns the utterances and the phoneme timings of those spoken by eSpeak.
    """
    speaker, folder = job.speaker, Path(job.out_dir) / "audio" / job.speaker.id
    utterances: list[Utterance] = []
    timings: list[UtteranceTimings] = []
    total = 0.0
    for k, text in enumerate(job.sentences):
        utt_id = f"{speaker.id}_{k:05d}"
        path = folder / f"{utt_id}.flac"
        rendering, duration = None, _existing_duration(path, job.sample_rate)
        if duration is None:
            rendering = render_with_timings(speaker, text, job.sample_rate)
            duration = rendering.audio.shape[0] / job.sample_rate
        if utterances and total + duration / 2 > job.seconds:
            return utterances, timings
        if rendering is not None:
            write_audio(path, rendering.audio, job.sample_rate)
        utterances.append(Utterance(utt_id, str(path.resolve()), text, speaker.id, duration, LANGUAGE))
        total += duration
        found = _utterance_timings(job, utt_id, text, rendering, duration) if speaker.engine == "espeak" else None
        if found is not None:
            timings.append(found)
    raise RuntimeError(f"{speaker.id} ran out of sentences at {total:.1f} s of {job.seconds:.1f} s")


def _utterance_timings(
    job: _SpeakerJob, utt_id: str, text: str, rendering: Rendering | None, duration: float
) -> UtteranceTimings | None:
    """An eSpeak utterance's timings: from its rendering, else those an earlier build recorded for its file, else
    from speaking it again (a file from a build that did not record timings). None if the file on disk has
    another length than what this build speaks: it is not this build's audio, and its timings are unknown."""
    if rendering is None:
        known = job.timings.get(utt_id)
        if known is not None and known.text == text:
            return known
        rendering = render_with_timings(job.speaker, text, job.sample_rate)
        if rendering.audio.shape[0] != round(duration * job.sample_rate):
            return None
    return UtteranceTimings(utt_id, text, rendering.phonemes)


def _existing_duration(path: Path, sample_rate: int) -> float | None:
    """The duration of a readable file at the corpus rate, else None (to be made again)."""
    if not path.is_file():
        return None
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None
    if info.samplerate != sample_rate or info.frames <= 0:
        return None
    return info.frames / info.samplerate


def _init_worker() -> None:
    torch.set_num_threads(1)


@contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """One intra-op thread, as in the workers, so the audio bytes do not depend on the number of workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_synthetic_corpus(
    out_dir: str | Path,
    hours: float,
    seed: int = 0,
    num_speakers: int = DEFAULT_NUM_SPEAKERS,
    sample_rate: int = SYNTHETIC_SAMPLE_RATE,
    workers: int = os.cpu_count() or 1,
    use_flite: bool | None = None,
) -> list[Utterance]:
    """Synthesize about `hours` of English speech by `num_speakers` voices into `out_dir`; see the module docstring.

    `use_flite=None` uses flite's voices when the `flite` program is installed. Returns the
    utterances (absolute audio paths, real durations), ordered by speaker and then by index.
    """
    if hours <= 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if use_flite is None:
        use_flite = flite_available()
    elif use_flite and not flite_available():
        raise RuntimeError("use_flite=True but the `flite` program is not installed (`apt-get install flite`)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = plan_speakers(num_speakers, seed, use_flite)
    seconds = hours * 3600 / num_speakers
    per_speaker = math.ceil(seconds / MIN_SECONDS_PER_SENTENCE) + 1
    pool_of_sentences = generate_sentences(per_speaker * num_speakers, seed)
    workers = min(workers, num_speakers)
    known = _existing_timings(out_dir / TIMINGS_FILE)
    with _executor(workers) as run:
        speakers = list(run(calibrate_speaker, plan))
        _write_speakers(out_dir, speakers, seed, sample_rate)
        jobs = [
            _SpeakerJob(speaker, pool_of_sentences[i::num_speakers], seconds, str(out_dir), sample_rate,
                        {k: v for k, v in known.items() if k.startswith(f"{speaker.id}_")})
            for i, speaker in enumerate(speakers)
        ]
        progress = dict(total=len(jobs), unit="speaker", desc=f"synthetic corpus ({hours:g} h)")
        results = list(tqdm(run(_build_speaker, jobs), **progress))
    write_timings(out_dir / TIMINGS_FILE, [t for _, timings in results for t in timings])
    return [utt for utterances, _ in results for utt in utterances]


def _existing_timings(path: Path) -> dict[str, UtteranceTimings]:
    """The timings an earlier build wrote; none if there is no file (or a damaged one: they are made again)."""
    if not path.is_file():
        return {}
    try:
        return read_timings(path)
    except ValueError as e:
        logger.warning("%s is damaged (%s); the phoneme timings are made again", path, e)
        return {}


@contextmanager
def _executor(workers: int) -> Iterator[Callable[[Callable, list], Iterator]]:
    """`run(fn, items)` -> results in order: in this process for one worker, else in a pool of spawned processes."""
    if workers == 1:
        with _single_threaded_torch():
            yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield pool.imap


def _write_speakers(out_dir: Path, speakers: list[SyntheticSpeaker], seed: int, sample_rate: int) -> None:
    """Write speakers.json; refuse to mix into a directory built with other speakers, seed or rate."""
    record = {"seed": seed, "sample_rate": sample_rate, "speakers": [asdict(s) for s in speakers]}
    path = out_dir / "speakers.json"
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing is not None and existing != record:
            raise ValueError(
                f"{out_dir} holds a synthetic corpus built with other settings (seed, speakers, flite or sample "
                "rate); build into an empty directory, or delete it first"
            )
    text = json.dumps(record, indent=2) + "\n"
    write_file(path, lambda tmp: tmp.write_text(text))
