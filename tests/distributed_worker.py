"""Runs a training recipe in one process of a multi-process launch and records what the distributed
tests check, one JSON line per event in $ECHO_TEST_RECORD/rank<R>.jsonl: the dataset items of
every batch this process trained on, and a digest of its models' weights and buffers at every
checkpoint.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py lm|codec RECIPE-ARGS...
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from data.lm_data import FrameBudgetBatchSampler
from data.segments import AudioSegments
from recipes import train_codec, train_lm, training

RECORD = Path(os.environ["ECHO_TEST_RECORD"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"


def record(event: dict) -> None:
    with RECORD.open("a") as f:
        f.write(json.dumps(event) + "\n")


def digest(accelerator) -> str:
    h = hashlib.sha256()
    for model in accelerator._models:
        for name, value in sorted(accelerator.unwrap_model(model).state_dict().items()):
            h.update(name.encode())
            h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


save_checkpoint = training.save_checkpoint


def recording_save_checkpoint(accelerator, run_dir, step, state, **kwargs):
    record({"checkpoint": step, "weights": digest(accelerator)})
    return save_checkpoint(accelerator, run_dir, step, state, **kwargs)


sampler_iter = FrameBudgetBatchSampler.__iter__


def recording_sampler_iter(self):
    for batch in sampler_iter(self):
        if self.num_replicas > 1:  # the training batches; the dev sampler is not sharded
            record({"batch": batch})
        yield batch


segment_getitem = AudioSegments.__getitem__


def recording_getitem(self, index):
    if self.random_crop:  # training segments; dev segments are fixed crops
        record({"item": int(index)})
    return segment_getitem(self, index)


training.save_checkpoint = recording_save_checkpoint
FrameBudgetBatchSampler.__iter__ = recording_sampler_iter
AudioSegments.__getitem__ = recording_getitem

if __name__ == "__main__":
    record({"pid": os.getpid()})
    recipe = {"lm": train_lm, "codec": train_codec}[sys.argv[1]]
    recipe.main(sys.argv[2:])
