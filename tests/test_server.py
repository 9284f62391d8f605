"""The HTTP server (app/server.py), for real: uvicorn on 127.0.0.1 in a thread, the tiny model, an httpx client.

The tiny model speaks nonsense; the tests check what the server promises: formats, lengths, headers,
sample rates, status codes, JSON errors, the queue and what a leaving client frees. A `Gate` holds the
model's thread inside a synthesis where a test needs a request to stay in line.
"""

import concurrent.futures
import contextlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn

from app.audio_formats import pcm16
from app.server import API_KEY_ENV, MAX_BEST_OF, ServerConfig, create_app
from app.tts import TTS
from conftest import PROMPT_TEXT, SR, TEXT
from test_prompt import speech_like

pytestmark = pytest.mark.usefixtures("one_thread")

LONG_TEXT = " ".join([TEXT, "My older sister painted the garage door a bright shade of green."] * 3)
MAX_INPUT_CHARS = 400
MAX_UPLOAD_BYTES = 256 * 1024


@contextlib.contextmanager
def running(tts: TTS, **config):
    """Serve `tts` on a free port of 127.0.0.1 in a background thread -> (base url, the app)."""
    app = create_app(tts, ServerConfig(torch_threads=1, **config))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wav_bytes(seconds: float, seed: int = 1, sample_rate: int = 22050) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(seconds, sample_rate, seed=seed), sample_rate, format="WAV")
    return buffer.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    samples, sample_rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    assert samples.shape[1] == 1, "mono"
    return samples[:, 0], sample_rate


def from_pcm(data: bytes) -> np.ndarray:
    assert len(data) % 2 == 0
    return np.frombuffer(data, dtype="<i2")


def error_of(response: httpx.Response, status: int) -> dict:
    """The JSON error of a response expected to fail with `status`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and len(error["message"]) > 10 and isinstance(error["type"], str)
    return error


def requests_held(client: httpx.Client) -> int:
    return client.get("/health").json()["queue"]["requests"]


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def tts(tiny_model_dir) -> TTS:
    return TTS.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def server(tts, tmp_path_factory):
    """The tiny model behind a real server, with the preset "me" (and room for 20 requests at once)."""
    voices = tmp_path_factory.mktemp("voices")
    tts.prepare_voice((speech_like(3.0, SR, seed=7), SR), PROMPT_TEXT).save(voices / "me.voice")
    with running(tts, voices_dir=voices, max_queue=32, max_input_chars=MAX_INPUT_CHARS,
                 max_upload_bytes=MAX_UPLOAD_BYTES) as (url, app):
        yield url, app


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server[0], timeout=60) as client:
        yield client


def speak(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/audio/speech", json={"input": TEXT, "voice": "me", **body})


# -- what the endpoints answer ---------------------------------------------------------------------------


def test_health_reports_the_model_the_limits_and_the_queue(client, tts):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "echo" and health["sample_rate"] == tts.sample_rate == SR
    assert health["queue"] == {"requests": 0, "capacity": 32}
    assert health["formats"] == ["wav", "flac", "pcm"] and health["stream_formats"] == ["wav", "pcm"]
    assert health["limits"]["max_input_chars"] == MAX_INPUT_CHARS and health["api_key_required"] is False


def test_formats_decode_to_the_same_audio_and_the_same_seed_to_the_same_bytes(client, tts, server):
    wav = speak(client, seed=3)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    assert wav.headers["x-sample-rate"] == str(SR)
    samples, sample_rate = decode(wav.content)
    assert sample_rate == SR and len(samples) > 0
    assert speak(client, seed=3).content == wav.content
    other, _ = decode(speak(client, seed=4).content)
    assert len(other) != len(samples) or not np.array_equal(other, samples)

    flac = speak(client, seed=3, response_format="flac")
    assert flac.headers["content-type"] == "audio/flac"
    flac_samples, flac_rate = decode(flac.content)
    assert flac_rate == SR and np.array_equal(flac_samples, samples)  # lossless: the very same samples

    pcm = speak(client, seed=3, response_format="pcm")
    assert pcm.headers["content-type"] == "audio/pcm" and pcm.headers["x-sample-rate"] == str(SR)
    assert np.array_equal(from_pcm(pcm.content), samples)

    # It is TTS.synthesize's audio, the server adds nothing of its own.
    direct, _ = tts.synthesize(TEXT, voice=server[1].state.config.voices_dir / "me.voice", seed=3)
    assert pcm.content == pcm16(direct)


def test_openai_model_names_and_echo_extras_are_accepted(client):
    for model in ("echo", "tts-1", "tts-1-hd", ""):
        assert speak(client, model=model, response_format="pcm").status_code == 200
    best = speak(client, best_of=2, seed=1, speed=1.0, language="en-us", response_format="pcm")
    assert best.status_code == 200 and len(best.content) > 0
    if importlib.util.find_spec("resemblyzer") is not None:  # candidates scored by listening to them
        reranked = speak(client, best_of=2, seed=1, rerank="logprob,speaker", response_format="pcm")
        assert reranked.status_code == 200 and len(reranked.content) > 0


@pytest.mark.parametrize("audio_format", ["pcm", "wav"])
def test_a_stream_arrives_in_pieces_and_is_the_whole_files_audio(client, audio_format):
    whole, _ = decode(speak(client, input=LONG_TEXT, seed=5).content)
    body = {"input": LONG_TEXT, "voice": "me", "seed": 5, "stream": True, "response_format": audio_format}
    with client.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers and response.headers["x-sample-rate"] == str(SR)
        assert response.headers["content-type"] == f"audio/{audio_format}"
        pieces = [piece for piece in response.iter_raw() if piece]
    assert len(pieces) > 1, "the audio came in one piece"
    body = b"".join(pieces)
    if audio_format == "wav":
        assert body[:4] == b"RIFF" and body[4:8] == b"\xff\xff\xff\xff"  # a header of unknown length
        streamed, sample_rate = decode(body)
        assert sample_rate == SR
    else:
        streamed = from_pcm(body)
    # TTS.stream's pieces concatenate to TTS.synthesize's audio up to float rounding (1e-7), which may move a
    # sample across a 16-bit step: one step of tolerance.
    assert len(streamed) == len(whole)
    assert np.abs(streamed.astype(int) - whole).max() <= 1


def test_streams_at_once_take_turns_on_the_model_and_each_gets_its_own_audio(client):
    def stream(seed: int) -> bytes:
        body = {"input": LONG_TEXT, "voice": "me", "seed": seed, "stream": True, "response_format": "pcm"}
        with client.stream("POST", "/v1/audio/speech", json=body) as response:
            return b"".join(response.iter_raw())

    seeds = [5, 6, 7]
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        streamed = list(pool.map(stream, seeds))
    for seed, audio in zip(seeds, streamed):
        whole = from_pcm(speak(client, input=LONG_TEXT, seed=seed, response_format="pcm").content)
        assert len(from_pcm(audio)) == len(whole) and np.abs(from_pcm(audio).astype(int) - whole).max() <= 1


def test_twenty_requests_at_once_are_all_answered(client):
    seeds = [i % 4 for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda seed: speak(client, seed=seed, response_format="pcm"), seeds))
    assert [r.status_code for r in responses] == [200] * 20
    by_seed = {}
    for seed, response in zip(seeds, responses):
        assert len(response.content) > 0 and len(response.content) % 2 == 0
        assert by_seed.setdefault(seed, response.content) == response.content  # the same seed, the same audio
    assert len(set(by_seed.values())) > 1
    assert requests_held(client) == 0


def test_voices_are_uploaded_listed_and_deleted(client):
    upload = client.post("/v1/voices", data={"name": "ann-2", "transcript": PROMPT_TEXT},
                         files={"file": ("ann.wav", wav_bytes(3.5), "audio/wav")})
    assert upload.status_code == 201, upload.text
    described = upload.json()
    assert described["name"] == "ann-2" and described["transcript"] == PROMPT_TEXT
    assert described["source"] == "ann.wav" and described["duration"] == pytest.approx(3.5, abs=0.3)
    listed = {voice["name"]: voice for voice in client.get("/v1/voices").json()["voices"]}
    assert set(listed) == {"me", "ann-2"} and listed["ann-2"] == described
    assert speak(client, voice="ann-2", response_format="pcm").status_code == 200
    again = client.post("/v1/voices", data={"name": "ann-2"}, files={"file": ("ann.wav", wav_bytes(3.5), "audio/wav")})
    assert "exists already" in error_of(again, 409)["message"]
    assert client.delete("/v1/voices/ann-2").json() == {"name": "ann-2", "deleted": True}
    assert [voice["name"] for voice in client.get("/v1/voices").json()["voices"]] == ["me"]
    assert "no voice 'ann-2'" in error_of(client.delete("/v1/voices/ann-2"), 404)["message"]


def test_a_preset_that_cannot_be_used_is_listed_with_the_reason(client, server):
    voices_dir = server[1].state.config.voices_dir
    (voices_dir / "broken.voice").write_bytes(b"not a voice")
    try:
        listed = {voice["name"]: voice for voice in client.get("/v1/voices").json()["voices"]}
        assert "not an Echo voice preset" in listed["broken"]["error"]
        assert "not an Echo voice preset" in error_of(speak(client, voice="broken"), 400)["message"]
    finally:
        (voices_dir / "broken.voice").unlink()


# -- every mistake is a 4xx with a JSON error that says what to do -----------------------------------------


def _speech(body=None, **kwargs):
    return ("POST", "/v1/audio/speech", {"json": body} if body is not None else kwargs)


def _upload(name="new", audio=None, filename="new.wav", **fields):
    files = {"file": (filename, wav_bytes(3.0) if audio is None else audio, "audio/wav")}
    return ("POST", "/v1/voices", {"data": {"name": name, **fields}, "files": files})


BAD_REQUESTS = {
    "missing input": (_speech({"voice": "me"}), 400, "input is missing"),
    "missing voice": (_speech({"input": TEXT}), 400, "voice is missing"),
    "empty text": (_speech({"input": "  ...  ", "voice": "me"}), 400, "nothing to say"),
    "text of spaces": (_speech({"input": "   ", "voice": "me"}), 400, "nothing to say"),
    "input not a string": (_speech({"input": 42, "voice": "me"}), 400, "input"),
    "unknown voice": (_speech({"input": TEXT, "voice": "nobody"}), 400, "no voice 'nobody'"),
    "voice name with a path": (_speech({"input": TEXT, "voice": "../me"}), 400, "not a valid voice name"),
    "mp3": (_speech({"input": TEXT, "voice": "me", "response_format": "mp3"}), 400, "'wav', 'pcm' or 'flac'"),
    "speed 1.5": (_speech({"input": TEXT, "voice": "me", "speed": 1.5}), 400, "speed must be 1.0"),
    "speed 0.5": (_speech({"input": TEXT, "voice": "me", "speed": 0.5}), 400, "pace of the voice prompt"),
    "unknown model": (_speech({"input": TEXT, "voice": "me", "model": "gpt-4o-mini-tts"}), 400, "serves one model"),
    "unknown field": (_speech({"input": TEXT, "voice": "me", "instructions": "cheerful"}), 400,
                      "instructions is not a field"),
    "negative seed": (_speech({"input": TEXT, "voice": "me", "seed": -1}), 400, "seed"),
    "seed not a number": (_speech({"input": TEXT, "voice": "me", "seed": "abc"}), 400, "seed"),
    "best_of too large": (_speech({"input": TEXT, "voice": "me", "best_of": MAX_BEST_OF + 1}), 400, "best_of"),
    "unknown language": (_speech({"input": TEXT, "voice": "me", "language": "xx"}), 400, "language 'xx'"),
    "flac stream": (_speech({"input": TEXT, "voice": "me", "stream": True, "response_format": "flac"}), 400,
                    "cannot be streamed"),
    "unknown rerank": (_speech({"input": TEXT, "voice": "me", "best_of": 2, "rerank": "loudness"}), 400,
                       "rerank with one or more of logprob, asr, speaker"),
    "best_of stream": (_speech({"input": TEXT, "voice": "me", "stream": True, "best_of": 2}), 400,
                       "one candidate per sentence"),
    "too long input": (_speech({"input": "Hello there. " * 40, "voice": "me"}), 400, "up to 400 per request"),
    "oversized body": (_speech({"input": "x" * 200_000, "voice": "me"}), 413, "send less"),
    "non-JSON body": (_speech(content=b"{input: hello", headers={"content-type": "application/json"}), 400,
                      "not valid JSON"),
    "plain text body": (_speech(content=b"Hello there.", headers={"content-type": "text/plain"}), 400,
                        "must be a JSON object"),
    "JSON array": (_speech([TEXT]), 400, "must be a JSON object"),
    "empty body": (_speech(content=b""), 400, "the body is empty"),
    "oversized upload": (_upload(audio=b"\0" * (MAX_UPLOAD_BYTES + 100_000)), 413, "send less"),
    "non-audio upload": (_upload(audio=b"this is not audio at all " * 40, filename="notes.txt"), 400,
                         "cannot read the voice prompt notes.txt"),
    "empty upload": (_upload(audio=b""), 400, "is empty"),
    "too short a recording": (_upload(audio=wav_bytes(1.0)), 400, "at least 2 s"),
    "upload without a file": (("POST", "/v1/voices", {"data": {"name": "x"}}), 400, "file is missing"),
    "upload as JSON": (("POST", "/v1/voices", {"json": {"name": "x"}}), 400, "name is missing"),
    "voice name with a slash": (_upload(name="a/b"), 400, "not a valid voice name"),
    "voice name going up": (_upload(name=".."), 400, "not a valid voice name"),
    "hidden voice name": (_upload(name=".me"), 400, "not a valid voice name"),
    "voice name with a space": (_upload(name="my voice"), 400, "not a valid voice name"),
    "too long a voice name": (_upload(name="v" * 65), 400, "not a valid voice name"),
    "empty voice name": (_upload(name=""), 400, "name"),
    "upload over a preset": (_upload(name="me"), 409, "exists already"),
    "upload in an unknown language": (_upload(language="xx"), 400, "language 'xx'"),
    "delete a bad name": (("DELETE", "/v1/voices/a.b", {}), 400, "not a valid voice name"),
    "delete an encoded path": (("DELETE", "/v1/voices/..%2Fme", {}), 404, "there is no /v1/voices/../me"),
    "delete a missing voice": (("DELETE", "/v1/voices/nobody", {}), 404, "no voice 'nobody'"),
    "unknown path": (("GET", "/v1/nothing", {}), 404, "there is no /v1/nothing"),
    "wrong method": (("GET", "/v1/audio/speech", {}), 405, "use POST"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_json_error(client, server, case):
    (method, path, kwargs), status, fragment = BAD_REQUESTS[case]
    error = error_of(client.request(method, path, **kwargs), status)
    assert fragment in error["message"], error
    assert (server[1].state.config.voices_dir / "me.voice").is_file()  # nothing escaped the voices directory
    assert requests_held(client) == 0


def test_a_body_sent_in_chunks_is_cut_off_at_the_limit(client):
    def chunks():  # no Content-Length: the server counts the bytes as they come
        yield b'{"voice": "me", "input": "'
        for _ in range(100):
            yield b"x" * 10_000
        yield b'"}'

    response = client.post("/v1/audio/speech", content=chunks(), headers={"content-type": "application/json"})
    assert "send less" in error_of(response, 413)["message"]


def test_a_server_with_an_api_key_wants_it_on_v1(tts, tmp_path, monkeypatch):
    with running(tts, voices_dir=tmp_path, api_key="s3cret") as (url, _), httpx.Client(base_url=url) as client:
        assert client.get("/health").json()["api_key_required"] is True  # health needs no key
        missing = client.get("/v1/voices")
        assert "needs an API key" in error_of(missing, 401)["message"]
        assert missing.json()["error"]["type"] == "authentication_error"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "not valid" in error_of(client.get("/v1/voices", headers={"Authorization": "Bearer wrong"}),
                                       401)["message"]
        # Refused before the body is read: a big upload without the key gets a 401, not a 413.
        upload = client.post("/v1/voices", data={"name": "x"}, files={"file": ("x.wav", b"\0" * 2_000_000)})
        error_of(upload, 401)
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/voices", headers=good).json() == {"voices": []}
        assert client.delete("/v1/voices/nobody", headers=good).status_code == 404


# -- the queue, and clients that leave ---------------------------------------------------------------------


class Gate:
    """Holds the model's thread inside `synthesize`, or after a stream's first piece, until `opened` is set."""

    def __init__(self, tts: TTS):
        self.opened = threading.Event()
        self.stream_waits = threading.Event()  # a stream is held at the gate
        self.synthesized = 0
        self.pieces = 0  # stream pieces handed to the server
        self.stream_ended = None  # "finished" or "closed" (stopped before its end)
        real_synthesize, real_stream = tts.synthesize, tts.stream

        def synthesize(*args, **kwargs):
            self.synthesized += 1
            assert self.opened.wait(30), "the test never opened the gate"
            return real_synthesize(*args, **kwargs)

        def stream(*args, **kwargs):
            ended = "closed"
            try:
                with contextlib.closing(real_stream(*args, **kwargs)) as pieces:
                    for piece in pieces:
                        if self.pieces == 1:
                            self.stream_waits.set()
                            assert self.opened.wait(30), "the test never opened the gate"
                        self.pieces += 1
                        yield piece
                ended = "finished"
            finally:
                self.stream_ended = ended

        tts.synthesize, tts.stream = synthesize, stream


@pytest.fixture
def gated(tiny_model_dir, tmp_path):
    """A server with its own TTS behind a Gate, and the preset "me"."""
    tts = TTS.from_pretrained(tiny_model_dir)
    tts.prepare_voice((speech_like(3.0, SR, seed=7), SR)).save(tmp_path / "me.voice")
    gate = Gate(tts)

    @contextlib.contextmanager
    def start(max_queue: int):
        with running(tts, voices_dir=tmp_path, max_queue=max_queue) as (url, app), \
                httpx.Client(base_url=url, timeout=60) as client:
            try:
                yield client, app
            finally:
                gate.opened.set()

    return gate, start


def raw_request(url: str, body: dict) -> socket.socket:
    """POST /v1/audio/speech on a socket of its own, not read: closing it is a client that leaves."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_full_queue_answers_503_with_retry_after_then_recovers(gated):
    gate, start = gated
    with start(max_queue=2) as (client, _), concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(speak, client, response_format="pcm") for _ in range(2)]  # one runs, one waits
        wait_until(lambda: requests_held(client) == 2)
        busy = speak(client, response_format="pcm")
        error = error_of(busy, 503)
        assert error["type"] == "server_busy" and busy.headers["retry-after"].isdigit()
        gate.opened.set()
        assert [future.result().status_code for future in held] == [200, 200]
        assert speak(client, response_format="pcm").status_code == 200  # recovered
        assert gate.synthesized == 3 and requests_held(client) == 0


def test_a_waiting_request_whose_client_leaves_is_never_synthesized(gated):
    gate, start = gated
    with start(max_queue=4) as (client, app), concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(speak, client, response_format="pcm")
        wait_until(lambda: gate.synthesized == 1)  # the model's thread is held inside the first
        leaving = raw_request(str(client.base_url), {"input": TEXT, "voice": "me"})
        wait_until(lambda: requests_held(client) == 2)
        leaving.close()
        wait_until(lambda: requests_held(client) == 1)  # its place is free before the model got to it
        gate.opened.set()
        assert first.result().status_code == 200
        assert gate.synthesized == 1 and requests_held(client) == 0


def test_a_client_leaving_mid_stream_closes_the_stream_and_frees_its_place(gated):
    gate, start = gated
    with start(max_queue=1) as (client, app):
        close_requested = threading.Event()
        worker = app.state.worker
        submit = worker.submit

        def spy(function, *args):
            if getattr(function, "__name__", "") == "close":
                close_requested.set()
            return submit(function, *args)

        worker.submit = spy
        body = {"input": LONG_TEXT, "voice": "me", "stream": True, "response_format": "pcm"}
        with httpx.Client(base_url=client.base_url, timeout=60) as listener:
            with listener.stream("POST", "/v1/audio/speech", json=body) as response:
                assert response.status_code == 200
                received = response.iter_raw()  # kept: a dropped iterator would close the connection
                assert len(next(received)) > 0  # the first piece
                assert gate.stream_waits.wait(10)  # the model's thread is inside the stream, at the gate
                assert requests_held(client) == 1
                error_of(speak(client, response_format="pcm"), 503)  # the stream holds the only place
                assert not close_requested.is_set()
        assert close_requested.wait(10), "the server did not close the stream when its client left"
        gate.opened.set()
        wait_until(lambda: requests_held(client) == 0)
        assert gate.stream_ended == "closed" and gate.pieces == 2  # stopped long before LONG_TEXT's end
        assert speak(client, response_format="pcm").status_code == 200  # the next request is served


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(gated):
    gate, start = gated
    with start(max_queue=2) as (client, app):
        tts = app.state.voices.tts
        working = tts.synthesize
        tts.synthesize = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("the model broke"))
        error = error_of(speak(client), 500)
        assert error["type"] == "server_error" and "RuntimeError" in error["message"]
        tts.synthesize = working
        gate.opened.set()
        assert speak(client).status_code == 200 and requests_held(client) == 0


# -- the command, the configuration and the optional extra -------------------------------------------------


def test_echo_tts_serve_serves_until_terminated(tiny_model_dir, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "app.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port),
               "--voices-dir", str(tmp_path / "voices"), "--threads", "1", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, API_KEY_ENV: "from-the-environment"})
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert process.poll() is None, process.communicate()[1].decode()
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{url}/health").status_code == 200
            return False

        wait_until(up, seconds=60)
        assert httpx.get(f"{url}/health").json()["api_key_required"] is True
        assert httpx.get(f"{url}/v1/voices", headers={"Authorization": "Bearer from-the-environment"}).json() == \
            {"voices": []}
        assert (tmp_path / "voices").is_dir()
    finally:
        process.terminate()
        process.wait(30)



def test_the_config_refuses_impossible_limits(tmp_path):
    for field in ("max_queue", "max_input_chars", "max_upload_bytes"):
        with pytest.raises(ValueError, match=field):
            ServerConfig(voices_dir=tmp_path, **{field: 0})
    assert ServerConfig(voices_dir=tmp_path, api_key="").api_key is None


def test_without_the_server_extra_app_imports_and_the_command_says_what_to_install():
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = None  # as if FastAPI were not installed\n"
        "import app\n"
        "from app import TTS\n"
        "try:\n"
        "    import app.server\n"
        "except ModuleNotFoundError as error:\n"
        "    print('import:', error)\n"
        "from app.cli import main\n"
        "main(['serve', '--model', 'runs/lm/model'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], env={**os.environ, API_KEY_ENV: ""})
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("import: the Echo server needs FastAPI") and "echo-tts[server]" in result.stdout
    assert result.stderr.startswith("echo-tts serve: error: the server needs FastAPI and uvicorn: pip install "
                                    "'echo-tts[server]'") and result.stderr.count("\n") == 1
