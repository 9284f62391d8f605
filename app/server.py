"""The HTTP server: an OpenAI-style speech API over a loaded `TTS` (FastAPI + uvicorn).

    echo-tts serve --model runs/lm/model                      # http://127.0.0.1:8000, docs at /docs
    curl -s -X POST http://127.0.0.1:8000/v1/voices -F name=me -F file=@me.wav -F "transcript=What I say."
    curl -s http://127.0.0.1:8000/v1/audio/speech -H 'Content-Type: application/json' \\
         -d '{"input": "Hello there.", "voice": "me"}' -o hello.wav

Endpoints (`create_app(tts, config)` builds them; `main(argv)` loads a model and serves it):

    POST   /v1/audio/speech   JSON {input, voice, model?, response_format?, speed?, stream?, seed?, best_of?,
                              language?} -> audio (wav by default, flac, or pcm: raw 16-bit little-endian mono)
    GET    /v1/voices         the voice presets
    POST   /v1/voices         multipart: name, file (3-10 s of speech), transcript?, language? -> a new preset
    DELETE /v1/voices/{name}
    GET    /health            model, sample rate, queue; needs no API key (for load balancers)

The server holds no synthesis logic: it validates requests, calls `TTS.synthesize`, `TTS.stream`,
`TTS.prepare_voice` and `TTS.load_voice`, and encodes the audio (app/audio_formats.py).

How it behaves, and why:

- One thread runs the model (`ModelWorker`): torch already spreads one synthesis over the cores,
  and several syntheses at once on a few cores only slow each other down. Whole-file requests run
  there one after another; a stream runs there one block at a time, so several streams advance
  together and a client that reads slowly never holds the model while it reads.
- At most `max_queue` synthesis requests are in the server at once, being synthesized or waiting
  their turn (a stream counts until it ends); one more is answered 503 with Retry-After, at once,
  rather than waiting behind a line it cannot see. A client that disconnects frees its place: a
  stream is closed (its generator stops at the block it is on), a request still waiting is dropped
  before it runs.
- `speed` must be 1.0. Echo speaks at the pace its AR model writes for the voice prompt; no model
  of it was trained to change that. Stretching the audio afterwards would be signal processing of
  the server's own (it holds none) that smears the codec's audio, so another speed is a 400 that
  says so rather than audio that quietly ignores it.
- `model` is optional: the server serves one model, named `config.model_name` ("echo" unless
  --model-name says otherwise). OpenAI's names tts-1 and tts-1-hd are taken as that model too, so
  that clients written for OpenAI work unchanged; any other name is a 400 naming the served model.
- Streaming (`"stream": true`) sends the audio with chunked transfer as it is made. pcm streams
  as it is; wav streams with a header of unknown length (sizes 0xFFFFFFFF), as streaming TTS
  servers send it; flac is refused (its header holds the total length). A stream speaks one
  candidate per sentence, so best_of > 1 is refused with it. Headers go out only once the first
  audio exists, so a bad request still gets its 4xx; an error after that ends the stream abruptly
  (the client sees a broken chunked response, never a silently truncated "complete" one).
- Every mistake is a 4xx with a JSON body {"error": {"message", "type", "param"}} whose message
  says what was wrong and what to do.

FastAPI, uvicorn and python-multipart are optional: pip install 'echo-tts[server]'.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hmac
import json
import logging
import os
import re
import sys
import tempfile
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

try:
    from fastapi import FastAPI, File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException
    import uvicorn
except ModuleNotFoundError as missing:  # pragma: no cover - exercised in a subprocess by the tests
    raise ModuleNotFoundError(f"the Echo server needs FastAPI, uvicorn and python-multipart ({missing.name} is "
                              "missing): pip install 'echo-tts[server]'", name=missing.name) from missing

from app.audio_formats import MEDIA_TYPES, STREAMABLE_FORMATS, encode_audio, pcm16, wav_stream_header
from app.cli import add_serving_arguments
from app.meters import MeterUnavailable

if TYPE_CHECKING:
    from app.tts import TTS
    from app.voice import Voice

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # this machine only; 0.0.0.0 serves the network
DEFAULT_PORT = 8000
MODEL_NAME = "echo"
OPENAI_MODEL_NAMES = ("tts-1", "tts-1-hd")  # taken as the served model, for clients written for OpenAI
API_KEY_ENV = "ECHO_API_KEY"
DEFAULT_MAX_QUEUE = 16  # synthesis requests held at once, running or waiting
DEFAULT_MAX_INPUT_CHARS = 4096  # OpenAI's limit for /v1/audio/speech
DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20  # a 10 s prompt is under 5 MB even as 48 kHz stereo float
MAX_BEST_OF = 8
RETRY_AFTER_SECONDS = 5
FORM_OVERHEAD_BYTES = 64 * 2**10  # multipart boundaries and the small fields around an upload
MAX_TRANSCRIPT_CHARS = 2000
VOICE_SUFFIX = ".voice"
VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
AUDIO_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its response; it reads nothing


def default_voices_dir() -> Path:
    """$XDG_DATA_HOME/echo-tts/voices (~/.local/share/echo-tts/voices): presets are the user's data, made
    from recordings that may be gone, so they belong with data (kept) rather than with caches (cleared)."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "echo-tts" / "voices"


@dataclass
class ServerConfig:
    """What the server allows; `create_app` serves one model with it."""

    voices_dir: Path = field(default_factory=default_voices_dir)
    api_key: str | None = None  # when set, /v1/ requests need "Authorization: Bearer <api_key>"
    model_name: str = MODEL_NAME
    max_queue: int = DEFAULT_MAX_QUEUE
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    torch_threads: int | None = None  # for the model's thread; None leaves torch's default

    def __post_init__(self) -> None:
        self.voices_dir = Path(self.voices_dir).expanduser()
        self.api_key = self.api_key or None
        for name in ("max_queue", "max_input_chars", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1 (None: torch's default), got {self.torch_threads}")
        if not self.model_name.strip():
            raise ValueError("model_name must not be empty")

    @property
    def max_json_bytes(self) -> int:
        """The largest /v1/audio/speech body: `max_input_chars` even as JSON escapes (up to 12 bytes a character)."""
        return 12 * self.max_input_chars + FORM_OVERHEAD_BYTES

    @property
    def max_form_bytes(self) -> int:
        return self.max_upload_bytes + FORM_OVERHEAD_BYTES


# -- errors --------------------------------------------------------------------------------------------


class APIError(HTTPException):
    """A request the server answers with `status` and {"error": {"message", "type", "param"}}."""

    def __init__(self, status: int, message: str, error_type: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message, self.error_type, self.param = message, error_type, param


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


def error_response(status: int, message: str, error_type: str = "invalid_request_error", param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": " ".join(message.split()), "type": error_type, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def tts_error(error: ValueError) -> APIError:
    """A mistake TTS reported (PromptError, VoiceError, EmptyTextError, ValueError) -> a 400 naming its field."""
    from app.prompt import PromptError
    from app.voice import VoiceError
    from data.normalize import EmptyTextError

    param = "input" if isinstance(error, EmptyTextError) else "voice" if isinstance(error, (PromptError, VoiceError)) \
        else None
    return APIError(400, str(error), param=param)


# -- the model's thread and the line in front of it ------------------------------------------------------


class ModelWorker:
    """One thread that runs the model, and the bound on the synthesis requests that may hold a place.

    `reserve()` takes a place (or raises a 503); every job is `submit`ted to the thread in order; the
    place is given back by `release_after(job)` once the request's last job is done or cancelled.
    """

    def __init__(self, capacity: int, torch_threads: int | None = None):
        self.capacity = capacity
        self._held = 0
        self._lock = threading.Lock()
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="echo-model", initializer=_set_torch_threads, initargs=(torch_threads,))

    @property
    def held(self) -> int:
        """Synthesis requests in the server now (running or waiting)."""
        return self._held

    def reserve(self) -> None:
        with self._lock:
            if self._held >= self.capacity:
                raise APIError(503, f"the server is busy: it holds {self._held} synthesis requests, its limit; retry "
                                    f"in {RETRY_AFTER_SECONDS} s", error_type="server_busy",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            self._held += 1

    def release(self) -> None:
        with self._lock:
            self._held = max(0, self._held - 1)

    def release_after(self, job: concurrent.futures.Future) -> None:
        job.add_done_callback(lambda _: self.release())

    def submit(self, function: Callable, *args: Any) -> concurrent.futures.Future:
        return self._thread.submit(function, *args)

    async def run(self, function: Callable, *args: Any) -> Any:
        return await asyncio.wrap_future(self.submit(function, *args))

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _set_torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


async def _result_of(request: Request, job: concurrent.futures.Future) -> Any:
    """The result of `request`'s job on the model's thread, or the HTTP error it comes to.

    A mistake TTS reports (a ValueError: PromptError, VoiceError, EmptyTextError) is a 400, any other
    failure a 500 (logged with its traceback); both are raised as HTTPExceptions, which keep the
    connection open for the client's next request. If the client disconnects first: ClientGone, and
    the job, if still waiting, never runs (a running one finishes; its result is dropped).
    """
    result = asyncio.wrap_future(job)
    result.add_done_callback(lambda done: done.cancelled() or done.exception())  # read, even if nobody waits now
    leaving = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
    if not result.done():
        job.cancel()
        raise ClientGone()
    try:
        return result.result()
    except APIError:
        raise
    except ValueError as error:
        raise tts_error(error) from None
    except Exception as error:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
        raise APIError(500, f"the server failed unexpectedly ({type(error).__name__}); its log has the details",
                       "server_error") from None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":  # the body was read: only a disconnect comes
        pass


# -- requests ------------------------------------------------------------------------------------------


class SpeechRequest(BaseModel):
    """The body of POST /v1/audio/speech: OpenAI's fields, and Echo's seed, best_of and language."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="the text to speak")
    voice: str = Field(description="the name of a voice preset (GET /v1/voices lists them)")
    model: str | None = Field(None, description="optional: the served model's name (tts-1 and tts-1-hd mean it too)")
    response_format: Literal["wav", "pcm", "flac"] = Field(
        "wav", description="wav, flac, or pcm (raw 16-bit little-endian mono at the model's sample rate)")
    speed: float = Field(1.0, description="must be 1.0: Echo speaks at the pace of the voice prompt")
    stream: bool = Field(False, description="send the audio as it is made (pcm or wav), with chunked transfer")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the same seed gives the same audio")
    best_of: int = Field(1, ge=1, le=MAX_BEST_OF, description="candidates per sentence; the best-scored is kept")
    rerank: str | None = Field(None, description="how best_of candidates are scored: one or more of logprob, asr, "
                                                 "speaker, e.g. 'asr,speaker' (default: the model's confidence)")
    language: str = Field("en-us", description="the language of the text (an eSpeak NG code)")

    @field_validator("speed")
    @classmethod
    def _speed_is_one(cls, speed: float) -> float:
        if speed != 1.0:
            raise ValueError(f"Echo speaks at the pace of the voice prompt and cannot change it, so speed must be "
                             f"1.0 (got {speed:g}): leave speed out, or make the voice from a recording at the pace "
                             "you want")
        return speed


SPEECH_EXAMPLE = '{"input": "Hello there.", "voice": "NAME"} with Content-Type: application/json'
UPLOAD_EXAMPLE = "multipart/form-data with name=NAME, file=@recording.wav and optionally transcript=..."


def describe_validation_error(error: RequestValidationError, path: str) -> tuple[str, str | None]:
    """FastAPI's list of validation errors -> (one message that says what to do, the first field at fault)."""
    usage = UPLOAD_EXAMPLE if path.startswith("/v1/voices") else SPEECH_EXAMPLE
    problems, params = [], []
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part != "body"]
        param = location[0] if location and not location[0].isdigit() else None
        kind, value = item.get("type", ""), item.get("input")
        if kind == "json_invalid":
            reason = item.get("ctx", {}).get("error", "")
            return f"the body is not valid JSON ({reason}); send {usage}", None
        if param is None and kind == "missing":
            return f"the body is empty; send {usage}", None
        if param is None and kind in ("model_attributes_type", "dict_type"):
            return f"the body must be a JSON object; send {usage}", None
        if kind == "missing":
            problems.append(f"{param} is missing")
        elif kind == "extra_forbidden":
            fields = ", ".join(SpeechRequest.model_fields)
            problems.append(f"{param} is not a field this server reads (it reads {fields})")
        elif kind == "value_error":
            problems.append(str(item.get("ctx", {}).get("error", item.get("msg"))))
        else:
            shown = f" (got {json.dumps(value)[:80]})" if isinstance(value, (str, int, float, bool)) else ""
            problems.append(f"{param or 'the body'}: {item.get('msg', 'invalid')}{shown}")
        params.append(param)
    structural = any(item.get("type") in ("missing", "extra_forbidden") for item in error.errors())
    return "; ".join(problems) + (f". Send {usage}" if structural else ""), next((p for p in params if p), None)


# -- voice presets -------------------------------------------------------------------------------------


class VoiceStore:
    """The voice presets of the server: NAME.voice files in one directory, loaded with the model's checks,
    and, when it serves the bundled model, the bundled voices (which cannot be replaced or deleted)."""

    def __init__(self, directory: Path, tts: "TTS"):
        from app.bundled import bundled_voices

        self.directory = Path(directory)
        self.tts = tts
        self.bundled = bundled_voices() if tts.default_voice is not None else {}

    def path(self, name: str, param: str = "voice") -> Path:
        if not VOICE_NAME.fullmatch(name):
            raise APIError(400, f"{name!r} is not a valid voice name: use 1-64 letters, digits, '-' or '_', starting "
                                "with a letter or a digit", param=param)
        return self.directory / f"{name}{VOICE_SUFFIX}"

    def names(self) -> list[str]:
        own = [] if not self.directory.is_dir() else [
            p.name[: -len(VOICE_SUFFIX)] for p in self.directory.glob(f"*{VOICE_SUFFIX}")
            if p.is_file() and VOICE_NAME.fullmatch(p.name[: -len(VOICE_SUFFIX)])]
        return sorted({*own, *self.bundled})

    def load(self, name: str) -> "Voice":
        from app.voice import VoiceError

        path = self.path(name)
        if not path.is_file() and name in self.bundled:
            path = self.bundled[name]
        if not path.is_file():
            names = self.names()
            have = f"the voices are: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}" if names \
                else "it has none yet"
            raise APIError(400, f"there is no voice {name!r} on this server ({have}); upload a recording with "
                                f"POST /v1/voices ({UPLOAD_EXAMPLE})", param="voice")
        try:
            return self.tts.load_voice(path)
        except VoiceError as error:
            raise APIError(400, f"the voice {name!r} cannot be used: {error}", param="voice") from None

    def describe(self, name: str) -> dict[str, Any]:
        try:
            voice = self.load(name)
        except APIError as error:
            return {"name": name, "error": error.message}
        return describe_voice(name, voice)

    def save(self, name: str, voice: "Voice") -> Path:
        path = self.path(name, param="name")
        if path.exists() or name in self.bundled:
            raise conflict(name)
        return voice.save(path)

    def delete(self, name: str) -> None:
        path = self.path(name, param="name")
        if not path.exists() and name in self.bundled:
            raise APIError(400, f"{name!r} is a voice bundled with Echo and cannot be deleted", param="name")
        try:
            path.unlink()
        except FileNotFoundError:
            raise APIError(404, f"there is no voice {name!r} to delete; GET /v1/voices lists them",
                           param="name") from None


def conflict(name: str) -> APIError:
    return APIError(409, f"a voice named {name!r} exists already: DELETE /v1/voices/{name} first, or choose "
                         "another name", param="name")


def describe_voice(name: str, voice: "Voice") -> dict[str, Any]:
    return {"name": name, "duration": round(voice.duration, 2), "transcript": voice.prompt_text,
            "language": voice.language, "source": voice.source}


# -- middleware ----------------------------------------------------------------------------------------


class APIKeyMiddleware:
    """/v1/ requests need "Authorization: Bearer <key>" (compared in constant time); others pass."""

    def __init__(self, app: Any, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization")
            if given is None or not hmac.compare_digest(given, self.expected):
                message = ("this server needs an API key: send the header 'Authorization: Bearer KEY'" if given is None
                           else "the API key is not valid: send 'Authorization: Bearer KEY' with the server's key")
                response = error_response(401, message, "authentication_error", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse a request body over its endpoint's limit with a JSON 413: at once when Content-Length says
    so, otherwise as soon as the bytes received pass it (the endpoint's body read raises an APIError)."""

    def __init__(self, app: Any, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await error_response(413, too_large(limit, scope["path"], int(declared)))(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise APIError(413, too_large(limit, scope["path"]))
            return message

        await self.app(scope, receive_within_limit, send)


def too_large(limit: int, path: str, size: int | None = None) -> str:
    """Why a body of `size` bytes (None: more than `limit`, counted as it came) is refused."""
    what = ("an upload (a voice prompt needs 3-10 s of speech: a wav of that is well under 1 MB)"
            if path.startswith("/v1/voices") else "a request body (the input text is what makes it long)")
    return (f"the request body is {size if size is not None else 'over ' + str(limit)} bytes; this server takes at "
            f"most {limit} bytes for {what}: send less")


# -- the app -------------------------------------------------------------------------------------------


class AudioStream(StreamingResponse):
    """A StreamingResponse that calls `on_close` when it ends, however it ends (finished, client gone, error)."""

    def __init__(self, content: Any, on_close: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def create_app(tts: "TTS", config: ServerConfig | None = None) -> FastAPI:
    """The server's ASGI app for a loaded `tts` (see the module docstring); uvicorn serves it."""
    config = config or ServerConfig()
    worker = ModelWorker(config.max_queue, config.torch_threads)
    voices = VoiceStore(config.voices_dir, tts)
    languages = tuple(tts.frontend.languages)
    served_names = {config.model_name, *OPENAI_MODEL_NAMES}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        config.voices_dir.mkdir(parents=True, exist_ok=True)
        yield
        worker.shutdown()

    app = FastAPI(title="Echo TTS", summary="Zero-shot voice cloning, OpenAI-style: POST /v1/audio/speech",
                  version="1", lifespan=lifespan)
    app.state.worker, app.state.voices, app.state.config = worker, voices, config
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: config.max_form_bytes
                       if path.startswith("/v1/voices") else config.max_json_bytes)
    if config.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)  # added last: runs first

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if isinstance(error, APIError):
            return error_response(error.status_code, error.message, error.error_type, error.param, error.headers)
        if error.status_code == 404:
            message = (f"there is no {request.url.path} on this server; it serves POST /v1/audio/speech, "
                       "GET/POST /v1/voices, DELETE /v1/voices/NAME and GET /health (the API is described at /docs)")
        elif error.status_code == 405:
            allowed = (error.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; use {allowed or 'another method'}"
        else:
            message = str(error.detail)
        return error_response(error.status_code, message, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(error, request.url.path)
        return error_response(400, message, param=param)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        """A bug of the server's own (the model's failures are 500s from `_result_of`)."""
        logger.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"the server failed unexpectedly ({type(error).__name__}); its log has the "
                                   "details", "server_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Whether the model is loaded, what it makes, and how full the line is."""
        return {
            "status": "ok",
            "model": config.model_name,
            "sample_rate": tts.sample_rate,
            "languages": list(languages),
            "formats": list(MEDIA_TYPES),
            "stream_formats": list(STREAMABLE_FORMATS),
            "queue": {"requests": worker.held, "capacity": worker.capacity},
            "limits": {"max_input_chars": config.max_input_chars, "max_upload_bytes": config.max_upload_bytes,
                       "max_best_of": MAX_BEST_OF},
            "api_key_required": config.api_key is not None,
        }

    @app.post("/v1/audio/speech", response_class=Response,
              responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()},
                               "description": "the audio, whole or streamed (chunked)"}})
    async def speech(body: SpeechRequest, request: Request) -> Response:
        """Speak `input` in the voice of the preset `voice`."""
        check_speech_request(body)
        voice = voices.load(body.voice)
        worker.reserve()
        if body.stream:
            return await stream_speech(request, body, voice)
        job = worker.submit(_synthesize_file, tts, body, voice)
        worker.release_after(job)
        audio = await _result_of(request, job)
        return Response(audio, media_type=MEDIA_TYPES[body.response_format],
                        headers={"X-Sample-Rate": str(tts.sample_rate)})

    def check_speech_request(body: SpeechRequest) -> None:
        if body.model not in (None, "", *served_names):
            raise APIError(400, f"this server serves one model, {config.model_name!r}, and not {body.model!r}: pass "
                                f"model={config.model_name!r} or leave model out", param="model")
        if len(body.input) > config.max_input_chars:
            raise APIError(400, f"input is {len(body.input)} characters long; this server speaks up to "
                                f"{config.max_input_chars} per request: split the text over several requests",
                           param="input")
        if languages and body.language not in languages:
            raise APIError(400, f"the model does not speak language {body.language!r}; it speaks "
                                f"{', '.join(languages)}", param="language")
        if body.stream and body.response_format not in STREAMABLE_FORMATS:
            raise APIError(400, f"{body.response_format} cannot be streamed (its header holds the total length): "
                                f"stream {' or '.join(STREAMABLE_FORMATS)}, or set stream to false",
                           param="response_format")
        if body.stream and body.best_of > 1:
            raise APIError(400, "a stream speaks one candidate per sentence (choosing the best of several needs them "
                                "all first): set best_of to 1, or stream to false", param="best_of")

    async def stream_speech(request: Request, body: SpeechRequest, voice: "Voice") -> Response:
        """Headers go out once the first audio exists (a mistake in the request is still a 4xx); then each
        piece as the model makes it. The generator is closed on the model's thread when the response ends."""
        chunks = tts.stream(body.input, voice=voice, seed=body.seed, language=body.language)

        def close() -> None:
            try:
                worker.release_after(worker.submit(chunks.close))
            except RuntimeError:  # the worker is shut down: the server is stopping
                worker.release()

        try:
            first = await _result_of(request, worker.submit(next, chunks, None))
        except BaseException:
            close()
            raise

        async def pieces():
            if body.response_format == "wav":
                yield wav_stream_header(tts.sample_rate)
            piece = first
            while piece is not None:
                yield pcm16(piece)
                piece = await worker.run(next, chunks, None)

        headers = {"X-Sample-Rate": str(tts.sample_rate), "X-Accel-Buffering": "no"}  # nginx: pass pieces on
        return AudioStream(pieces(), on_close=close, media_type=MEDIA_TYPES[body.response_format], headers=headers)

    @app.get("/v1/voices")
    async def list_voices() -> dict[str, Any]:
        """The voice presets, with their prompt's duration and transcript (or why one cannot be used)."""
        return {"voices": [voices.describe(name) for name in voices.names()]}

    @app.post("/v1/voices", status_code=201)
    async def upload_voice(request: Request, name: str = Form(description="the preset's name: 1-64 of A-Z a-z 0-9 - _"),
                           file: UploadFile = File(description="3-10 s of one person speaking (wav, flac, ogg, mp3)"),
                           transcript: str | None = Form(None, description="what the recording says (optional)"),
                           language: str = Form("en-us", description="the language of the transcript")) -> dict:
        """Make a voice preset from a recording: cleaned, encoded once, saved as NAME."""
        path = voices.path(name, param="name")
        if path.exists():
            raise conflict(name)
        if languages and language not in languages:
            raise APIError(400, f"the model does not speak language {language!r}; it speaks {', '.join(languages)}",
                           param="language")
        if transcript is not None and len(transcript) > MAX_TRANSCRIPT_CHARS:
            raise APIError(400, f"the transcript is {len(transcript)} characters long; a 3-10 s recording says far "
                                f"less (at most {MAX_TRANSCRIPT_CHARS} are taken)", param="transcript")
        audio = await file.read()
        if not audio:
            raise APIError(400, "the uploaded file is empty; send 3-10 s of speech as wav, flac, ogg or mp3",
                           param="file")
        if len(audio) > config.max_upload_bytes:
            raise APIError(413, too_large(config.max_upload_bytes, request.url.path, len(audio)), param="file")
        filename = Path(file.filename or "upload").name
        worker.reserve()
        job = worker.submit(_prepare_voice, tts, audio, filename, transcript, language)
        worker.release_after(job)
        voice = await _result_of(request, job)
        voices.save(name, voice)
        described = describe_voice(name, voice)
        if transcript and transcript.strip() and voice.prompt_text is None:
            described["warning"] = ("the transcript was not used: the recording was cut to its best 10 s, which it no "
                                    "longer matches, or it has no words")
        logger.info("saved the voice %r from %s (%.1f s)", name, filename, voice.duration)
        return described

    @app.delete("/v1/voices/{name}")
    async def delete_voice(name: str) -> dict[str, Any]:
        """Delete the voice preset NAME."""
        voices.delete(name)
        return {"name": name, "deleted": True}

    return app


def _synthesize_file(tts: "TTS", body: SpeechRequest, voice: "Voice") -> bytes:
    """On the model's thread: the whole audio of a request, encoded."""
    try:
        wav, sample_rate = tts.synthesize(body.input, voice=voice, seed=body.seed, best_of=body.best_of,
                                          language=body.language, scorers=body.rerank or None)
    except MeterUnavailable as error:  # the listening scorer's package or model is not on this server
        raise APIError(400, f"rerank {body.rerank!r} is not available on this server: {error}",
                       param="rerank") from None
    return encode_audio(wav, sample_rate, body.response_format)


def _prepare_voice(tts: "TTS", audio: bytes, filename: str, transcript: str | None, language: str) -> "Voice":
    """On the model's thread: an uploaded recording -> a Voice, its source and its errors naming the upload.

    The bytes go through a temporary file with the upload's suffix, so that they are read as any
    prompt file is (app/prompt.py: every format soundfile reads, the same checks and messages).
    """
    suffix = Path(filename).suffix if AUDIO_SUFFIX.fullmatch(Path(filename).suffix) else ".audio"
    with tempfile.TemporaryDirectory(prefix="echo-upload-") as directory:
        path = Path(directory) / f"prompt{suffix}"
        path.write_bytes(audio)
        try:
            voice = tts.prepare_voice(path, transcript, language)
        except ValueError as error:  # PromptError above all: too short, silent, clipped, not audio
            raise APIError(400, str(error).replace(str(path), filename), param="file") from None
    voice.source = filename
    return voice


# -- serving -------------------------------------------------------------------------------------------


def serve(tts: "TTS", config: ServerConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log_level: str = "info") -> None:
    """Serve `tts` with uvicorn until interrupted."""
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        logger.warning("serving on %s without an API key: anyone who can reach this machine can use the model and "
                       "change its voices (set --api-key or $%s)", host, API_KEY_ENV)
    uvicorn.run(create_app(tts, config), host=host, port=port, log_level=log_level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echo-tts serve",
        description="Serve an exported model over HTTP: an OpenAI-style POST /v1/audio/speech, voice presets at "
                    "/v1/voices, GET /health; the API is described at /docs once it runs.",
        epilog="examples:\n"
               "  echo-tts serve                                          # the bundled model, http://127.0.0.1:8000\n"
               "  ECHO_API_KEY=secret echo-tts serve --model runs/lm/model --host 0.0.0.0 --port 8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serving_arguments(parser, DEFAULT_HOST, DEFAULT_PORT)
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV} if set, else no "
                             f"key; prefer the variable: a key on the command line shows in the process list)")
    parser.add_argument("--voices-dir", type=Path, default=None,
                        help=f"where the voice presets live (default {default_voices_dir()})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"synthesis requests held at once, running or waiting; more are answered 503 with "
                             f"Retry-After (default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--max-input-chars", type=int, default=DEFAULT_MAX_INPUT_CHARS,
                        help=f"the longest input text of one request (default {DEFAULT_MAX_INPUT_CHARS})")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                        help=f"the largest voice recording upload (default {DEFAULT_MAX_UPLOAD_BYTES / 2**20:g})")
    parser.add_argument("--model-name", default=MODEL_NAME,
                        help=f"the name clients may give as 'model' (default {MODEL_NAME}; tts-1 and tts-1-hd "
                             "are accepted too)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for synthesis (default: torch's choice, the number of cores)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--asr", default=None,
                        help="a Whisper directory or hub id: transcribes uploads given without a transcript and "
                             "scores best_of candidates")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default info)")
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig that parsed `echo-tts serve` arguments ask for; raises ValueError."""
    return ServerConfig(
        voices_dir=args.voices_dir if args.voices_dir is not None else default_voices_dir(),
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV),
        model_name=args.model_name,
        max_queue=args.max_queue,
        max_input_chars=args.max_input_chars,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        torch_threads=args.threads,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    from app.tts import TTS

    try:
        config = config_from_args(args)
        tts = TTS.from_pretrained(args.model, args.device, asr=args.asr)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    logger.info("voice presets in %s", config.voices_dir)
    serve(tts, config, args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
