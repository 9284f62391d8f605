"""Shared test fixtures: a tiny random-weight Echo model in the export layout (model/{codec,ar,nar,text})."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from codec.model import CodecConfig, EchoCodec
from data.frontend import TextFrontend
from data.sentences import generate_sentences
from lm.ar import ARConfig, ARModel
from lm.nar import NARConfig, NARModel
from lm.pretrained import text_vocab_identity
from recipes.training import torchrun_command

SR = 16000
TEXT = "The children found a tiny kite near the bridge."
PROMPT_TEXT = "We waited almost twenty minutes for the bus."


def build_tiny_model(root: Path, seed: int = 0) -> Path:
    """A random-weight model directory in the export layout: model/{codec,ar,nar,text}."""
    torch.manual_seed(seed)
    codec = EchoCodec(CodecConfig(sample_rate=SR, channels=4, strides=(4, 5, 8), dilations=(1,), latent_dim=8,
                                  n_q=3, codebook_size=16)).eval()  # 100 frames a second
    frontend = TextFrontend.build(generate_sentences(40) + [TEXT, PROMPT_TEXT])
    sizes = dict(text_vocab_size=len(frontend.vocab), text_pad_id=frontend.vocab.pad_id, codebook_size=16, n_q=3,
                 codec=codec.identity.to_dict(), text_vocab=text_vocab_identity(frontend.vocab.to_dict()),
                 d_model=16, n_heads=2, n_layers=1, ffn_dim=32, dropout=0.0)
    model_dir = root / "model"
    ARModel(ARConfig(**sizes)).save_pretrained(model_dir / "ar")
    NARModel(NARConfig(**sizes)).save_pretrained(model_dir / "nar")
    codec.save_pretrained(model_dir / "codec")
    frontend.save_pretrained(model_dir / "text")
    return model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny model for the whole session; tests only read it."""
    return build_tiny_model(tmp_path_factory.mktemp("echo"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one torch thread: on 2 shared cores, more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DISTRIBUTED_WORKER = Path(__file__).parent / "distributed_worker.py"


def launch_two_processes(recipe: str, record_dir: Path, *args: str) -> subprocess.Popen:
    """Two CPU processes (torchrun, gloo) of a recipe ("lm" or "codec") through
    tests/distributed_worker.py, which records each process's batches and weights in `record_dir`.
    (`accelerate launch --cpu --num_processes 2` starts one process: Accelerate runs several CPU
    processes only through mpirun.) To crash the run, kill the launcher and the process ids the
    workers recorded: torchrun starts them in sessions of their own."""
    record_dir.mkdir(parents=True, exist_ok=True)
    command = torchrun_command(2, str(DISTRIBUTED_WORKER), recipe, *args)
    env = os.environ | {"ECHO_TEST_RECORD": str(record_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def recorded(record_dir: Path) -> dict[int, list[dict]]:
    """What each process recorded: {rank: [event, ...]}."""
    events = {}
    for path in sorted(record_dir.glob("rank*.jsonl")):
        lines = path.read_text().split("\n")[:-1]  # a line torn by a kill has no newline yet
        events[int(path.stem.removeprefix("rank"))] = [json.loads(line) for line in lines]
    return events
