"""eSpeak NG: where it lives (the library bundled by `espeakng-loader`, else a system install) and speech from it."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import weakref
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np


@dataclass(frozen=True)
class EspeakInstall:
    library: str  # path of libespeak-ng
    data: str | None  # espeak-ng-data directory; None lets the library use its compiled-in default


@cache
def find_espeak() -> EspeakInstall:
    """Locate libespeak-ng and its data, preferring the copy bundled with `espeakng-loader`."""
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        library, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        if Path(library).is_file():
            return EspeakInstall(library, data)
    system = os.environ.get("PHONEMIZER_ESPEAK_LIBRARY") or ctypes.util.find_library("espeak-ng")
    if system:
        return EspeakInstall(system, os.environ.get("ESPEAK_DATA_PATH"))
    raise RuntimeError(
        "eSpeak NG was not found: install the bundled copy with `pip install espeakng-loader` "
        "(or the system package: `apt-get install espeak-ng`)"
    )


# The subset of eSpeak NG's C API (speak_lib.h) that speech synthesis needs.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # like RETRIEVAL (audio comes back through the callback), but espeak_Synth blocks
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data directory makes the library call exit()
_INITIALIZE_PHONEME_EVENTS = 0x0001  # report where each phoneme starts (the audio does not change)
_INITIALIZE_PHONEME_IPA = 0x0002  # ... and name it in IPA, as phonemizer writes it
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7  # espeak_EVENT_TYPE
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_BUFFER_MS = 500
_NOISE_SEED = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT: for a phoneme event, `sample` is where the phoneme starts in the utterance's audio
    and `id.string` its name (UTF-8, zero-terminated unless it fills the 8 bytes)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)  # (samples, how many, the events of these samples, ending with one of type 0) -> 0 to go on

# Answers of the helper process: a status byte, a length, the payload.
_OK, _FAILED, _REJECTED = 0, 1, 2  # success; an error; a ValueError (bad input)
_FRAME = struct.Struct("<BI")
_LENGTH = struct.Struct("<I")  # a spoken answer: the length of the phoneme list (JSON), the list, the samples
# The helper runs isolated (-I: no environment variables, no script folder) with this process's import path.
_HELPER = (
    "import os, sys; sys.path[:0] = sys.argv[1].split(os.pathsep); from data.espeak import _serve; _serve(*sys.argv[2:])"
)


@dataclass(frozen=True)
class VoiceSettings:
    """One eSpeak NG voice: a language voice with an optional variant, and the prosody parameters."""

    name: str = "en-us"  # a voice with an optional variant after "+": "en-gb-scotland+f3", "en-us+Alex"
    rate: int = 175  # words per minute, 80-450
    pitch: int = 50  # base pitch, 0-100 (50 is the voice's own)
    pitch_range: int = 50  # intonation range, 0 (monotone) - 100
    word_gap: int = 0  # extra pause between words, in units of 10 ms
    volume: int = 100  # amplitude, 0-200; loud variants clip above about 70

    def __post_init__(self) -> None:
        limits = {
            "rate": (80, 450), "pitch": (0, 100), "pitch_range": (0, 100), "word_gap": (0, 1000), "volume": (0, 200)
        }  # fmt: skip
        for field, (low, high) in limits.items():
            value = getattr(self, field)
            if not low <= value <= high:
                raise ValueError(f"VoiceSettings.{field} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class PhonemeEvent:
    """Where eSpeak NG starts a phoneme: its IPA name as eSpeak writes it for the voice's accent, with the
    stress mark it carries ("ˈoʊ", "ɹ"), or "" for a pause; and its first sample in the utterance's audio."""

    phoneme: str
    sample: int


@dataclass(frozen=True)
class EspeakSpeech:
    audio: np.ndarray  # float32 [T] in [-1, 1) at the synthesizer's sample rate
    phonemes: tuple[PhonemeEvent, ...]  # in the order spoken; samples never decrease


class EspeakSynthesizer:
    """Speech from libespeak-ng: `synthesize(text, voice)` returns float32 audio at `sample_rate` (22050 Hz);
    `speak(text, voice)` also says where each phoneme starts.

    libespeak-ng keeps its state in process globals, and some of it survives from one utterance
    to the next (the phase of the pitch flutter and of the roughness modulation), so speaking the
    same text twice in one process gives slightly different audio; its noise generator (breathy
    variants) is seeded from the clock. To make every call a pure function of (text, voice), a
    small helper process owns the library: it initialises it once and answers each request from
    a forked child of that pristine state, with the noise generator seeded by a constant. The
    helper imports nothing heavy, so a fork costs about 2 ms (forking a process that has torch
    loaded costs 20-40 ms); it also keeps fork() out of the caller's threads. Where `os.fork`
    does not exist, the helper speaks in-process and the audio depends on what came before.

    Use one synthesizer per process, from `espeak_synthesizer()`.
    """

    def __init__(self, install: EspeakInstall | None = None) -> None:
        install = install or find_espeak()
        helper = [sys.executable, "-I", "-c", _HELPER, os.pathsep.join(sys.path), install.library, install.data or ""]
        self._process = subprocess.Popen(helper, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._stop = weakref.finalize(self, _stop_helper, self._process)  # at close(), collection or exit
        self._lock = threading.Lock()
        (self.sample_rate,) = struct.unpack("<i", self._receive())

    def synthesize(self, text: str, voice: VoiceSettings = VoiceSettings()) -> np.ndarray:
        """Speak `text` with `voice`: float32 samples in [-1, 1) at `self.sample_rate`, shape [T].

        The same text and voice always give the same samples, whatever was spoken before.
        """
        return self.speak(text, voice).audio

    def speak(self, text: str, voice: VoiceSettings = VoiceSettings()) -> EspeakSpeech:
        """`synthesize`, with eSpeak's phoneme events: where each phoneme (or pause) starts in the audio."""
        answer = self._ask({"speak": text, "voice": asdict(voice)})
        (length,) = _LENGTH.unpack_from(answer)
        events = json.loads(answer[_LENGTH.size : _LENGTH.size + length])
        samples = np.frombuffer(answer[_LENGTH.size + length :], dtype=np.int16)
        return EspeakSpeech(
            audio=samples.astype(np.float32) / 32768.0,
            phonemes=tuple(PhonemeEvent(name, sample) for name, sample in events),
        )

    def has_voice(self, name: str) -> bool:
        """Whether this install has the voice `name`. An unknown variant after "+" falls back to the plain voice."""
        return self._ask({"has_voice": name}) == b"\x01"

    def close(self) -> None:
        self._stop()

    def _ask(self, request: dict) -> bytes:
        message = json.dumps(request).encode()
        with self._lock:
            if self._process.poll() is not None:
                raise RuntimeError(f"the eSpeak NG helper process has ended (status {self._process.returncode})")
            self._process.stdin.write(struct.pack("<I", len(message)) + message)
            self._process.stdin.flush()
            return self._receive()

    def _receive(self) -> bytes:
        header = self._process.stdout.read(_FRAME.size)
        if len(header) < _FRAME.size:
            raise RuntimeError("the eSpeak NG helper process died; its error is above")
        status, length = _FRAME.unpack(header)
        payload = self._process.stdout.read(length)
        if status == _REJECTED:
            raise ValueError(payload.decode(errors="replace"))
        if status != _OK:
            raise RuntimeError(f"eSpeak NG failed: {payload.decode(errors='replace')}")
        return payload


def _stop_helper(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.stdin.close()  # the helper ends at the end of its input
        process.wait()
    process.stdout.close()


@cache
def espeak_synthesizer() -> EspeakSynthesizer:
    """This process's synthesizer, created (with its helper process) on first use."""
    return EspeakSynthesizer()


def espeak_variants(install: EspeakInstall | None = None) -> list[str]:
    """Names of the voice variants (the part after "+") in the install's data; [] if its data path is unknown."""
    install = install or find_espeak()
    if install.data is None:
        return []
    folder = Path(install.data) / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


class _EspeakLibrary:
    """The ctypes binding, used inside the helper process only."""

    def __init__(self, install: EspeakInstall) -> None:
        self._lib = ctypes.CDLL(install.library)
        self._declare_signatures()
        data = install.data.encode() if install.data else None
        options = _INITIALIZE_DONT_EXIT | _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA
        sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data, options)
        if sample_rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise from {install.library} with data {install.data}")
        self.sample_rate: int = sample_rate
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []  # (phoneme, first sample) of the utterance being spoken
        self._callback = _SynthCallback(self._collect)  # kept alive here: the library holds a pointer to it

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size in bytes, with the terminating zero
            ctypes.c_uint,  # start position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: to the end)
            ctypes.c_uint,  # flags
            ctypes.POINTER(ctypes.c_uint),  # unique identifier (unused)
            ctypes.c_void_p,  # user data (unused)
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # eSpeak NG >= 1.52; older versions draw from the C library's rand()
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed.restype = None

    def answer(self, request: dict) -> bytes:
        if "has_voice" in request:
            return b"\x01" if self._select(request["has_voice"]) else b"\x00"
        samples, events = self._speak(request["speak"].encode("utf-8"), VoiceSettings(**request["voice"]))
        listed = json.dumps(events, ensure_ascii=False).encode()
        return _LENGTH.pack(len(listed)) + listed + samples.tobytes()

    def _select(self, name: str) -> bool:
        return self._lib.espeak_SetVoiceByName(name.encode()) == _EE_OK

    def _speak(self, text: bytes, voice: VoiceSettings) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """int16 samples [T], and the phoneme events: (IPA name or "" for a pause, first sample)."""
        if not self._select(voice.name):
            raise ValueError(
                f"eSpeak NG has no voice {voice.name!r}; `espeak-ng --voices=en` lists the voices, "
                "the data folder's voices/!v the variants"
            )
        for parameter, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_WORDGAP, voice.word_gap),
            (_PARAM_VOLUME, voice.volume),
        ):
            self._lib.espeak_SetParameter(parameter, value, 0)
        if hasattr(self._lib, "espeak_ng_SetRandSeed"):
            self._lib.espeak_ng_SetRandSeed(_NOISE_SEED)
        else:
            ctypes.CDLL(None).srand(_NOISE_SEED)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._chunks, self._events = [], []
        status = self._lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        (chunks, self._chunks), (events, self._events) = (self._chunks, []), (self._events, [])
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth returned error {status}")
        return (np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)), events

    def _collect(self, wav: ctypes.Array, num_samples: int, events: ctypes.Array) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:  # a name of 8 bytes has no terminating zero and may end mid-character
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", errors="ignore")
                self._events.append((name, int(event.sample)))
            i += 1
        return 0  # 0 = go on


def _serve(library: str, data: str) -> None:
    """The helper process: initialise eSpeak NG, then answer each request from a fresh fork of that state.

    It ends when its input does (its owner closed it or died), and leaves Ctrl-C to its owner.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the C library prints goes to stderr, not into the answers
    try:
        espeak = _EspeakLibrary(EspeakInstall(library, data or None))
    except Exception as e:
        _send(answers, _FAILED, str(e).encode())
        return
    _send(answers, _OK, struct.pack("<i", espeak.sample_rate))
    while len(header := requests.read(4)) == 4:
        request = json.loads(requests.read(struct.unpack("<I", header)[0]))
        _send(answers, *_in_fresh_child(lambda: espeak.answer(request)))


def _in_fresh_child(work: Callable[[], bytes]) -> tuple[int, bytes]:
    """(status, payload) of `work`, run in a forked child so that this process's library state stays pristine."""
    if not hasattr(os, "fork"):
        return _attempt(work)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: work, send the answer, leave without running the parent's cleanup
        status = _FAILED
        try:
            os.close(read_end)
            status, payload = _attempt(work)
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    if status not in (_OK, _FAILED, _REJECTED):
        return _FAILED, f"the process that speaks ended with status {status}".encode()
    return status, payload


def _attempt(work: Callable[[], bytes]) -> tuple[int, bytes]:
    try:
        return _OK, work()
    except ValueError as e:
        return _REJECTED, str(e).encode()
    except Exception as e:
        return _FAILED, f"{type(e).__name__}: {e}".encode()


def _send(answers: BinaryIO, status: int, payload: bytes) -> None:
    answers.write(_FRAME.pack(status, len(payload)) + payload)
    answers.flush()
