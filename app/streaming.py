"""Synthesis block by block: the schedule of blocks and the trimming of a chunk's edges, incrementally.

A chunk's codebook 1 is rendered in blocks of frames (`block_bounds`): each block gets its own
NAR pass and decoder pass over a window that reaches `context` frames before the block and
`lookahead` frames after it (app/tts.py). A block depends only on the codebook-1 frames of its
window, so it can be rendered as soon as the AR model has written `lookahead` frames past it,
and rendering the same blocks after the whole chunk is written gives the same audio: whole
synthesis and streaming share this path, and a stream's concatenation is the whole synthesis.

`EdgeTrimmer` drops a chunk's leading and trailing silence and fades its ends while the audio is
still arriving. It releases a sample only once nothing that comes later can change it.
"""

from __future__ import annotations

import numpy as np

SILENCE_DBFS = -50.0  # frames quieter than this are silence (prompts are normalized to -20 LUFS, app/prompt.py)
FRAME_SECONDS = 0.02  # the grid silence is judged on
KEEP_SECONDS = 0.05  # of silence kept before the first and after the last loud frame
FADE_SECONDS = 0.01  # fade in and out over this much (no clicks at the joins)


def block_bounds(n_frames: int, first: int, size: int) -> list[tuple[int, int]]:
    """The blocks [start, end) of a chunk of `n_frames` frames: the first `first` frames, then `size` at a time."""
    if first < 1 or size < 1:
        raise ValueError(f"blocks need at least one frame, got first={first}, size={size}")
    bounds, start = [], 0
    while start < n_frames:
        end = min(n_frames, first if start == 0 else start + size)
        bounds.append((start, end))
        start = end
    return bounds


class EdgeTrimmer:
    """Trim a chunk's silent edges and fade its ends, on audio that arrives piece by piece.

    Frames of `FRAME_SECONDS` (on the chunk's own sample grid) below `SILENCE_DBFS` are silence.
    The chunk keeps [first loud frame - keep, last loud frame + keep) (all of it when no frame is
    loud), faded in and out over `FADE_SECONDS` (half its length when shorter). `push` returns the
    samples that are final; `finish` returns the rest. Fed the whole chunk at once, it is the
    offline trim, so a streamed chunk equals a whole one sample for sample.
    """

    def __init__(self, sample_rate: int):
        self.hop = max(1, int(FRAME_SECONDS * sample_rate))
        self.keep = int(KEEP_SECONDS * sample_rate)
        self.fade = int(FADE_SECONDS * sample_rate)
        self.audio = np.zeros(0, dtype=np.float32)  # everything pushed so far (a chunk is a few seconds)
        self.first_loud: int | None = None  # frame indices
        self.last_loud: int | None = None
        self.judged = 0  # frames judged so far
        self.released = 0  # samples of self.audio already handed out (or dropped before the start)
        self.finished = False

    def push(self, wav: np.ndarray) -> np.ndarray:
        """Add the next samples of the chunk; returns the float32 samples that are now final."""
        if self.finished:
            raise RuntimeError("this chunk is finished: use a new EdgeTrimmer for the next one")
        self.audio = np.concatenate([self.audio, np.asarray(wav, dtype=np.float32).reshape(-1)])
        self._judge(len(self.audio) // self.hop)
        if self.first_loud is None:
            return np.zeros(0, dtype=np.float32)  # all silence so far: it may all be kept, or all dropped
        start = self._start()
        # The end is at least the last loud frame + keep; the fade-out may reach `fade` before it.
        end_at_least = min(len(self.audio), (self.last_loud + 1) * self.hop + self.keep)
        if end_at_least - start < 2 * self.fade:
            return np.zeros(0, dtype=np.float32)  # the fade lengths are not settled yet
        return self._release(start, end_at_least - self.fade, end=None)

    def finish(self) -> np.ndarray:
        """The chunk is complete: the rest of its trimmed, faded samples."""
        if self.finished:
            raise RuntimeError("finish was already called on this EdgeTrimmer")
        self.finished = True
        T = len(self.audio)
        self._judge(-(-T // self.hop))  # the last partial frame counts, as if padded with zeros
        if self.first_loud is None:
            start, end = 0, T
        else:
            start, end = self._start(), min(T, (self.last_loud + 1) * self.hop + self.keep)
        return self._release(start, end, end=end)

    def _start(self) -> int:
        return max(0, self.first_loud * self.hop - self.keep)

    def _judge(self, n_frames: int) -> None:
        for f in range(self.judged, n_frames):
            frame = self.audio[f * self.hop:(f + 1) * self.hop]
            rms = float(np.sqrt(np.sum(frame.astype(np.float64) ** 2) / self.hop))  # zero-padded past the end
            if 20 * np.log10(max(rms, 1e-10)) > SILENCE_DBFS:
                self.first_loud = f if self.first_loud is None else self.first_loud
                self.last_loud = f
        self.judged = max(self.judged, n_frames)

    def _release(self, start: int, stop: int, end: int | None) -> np.ndarray:
        """Samples [max(released, start), stop), faded; `end` is the chunk's final end once known."""
        begin = max(self.released, start)
        if stop <= begin:
            return np.zeros(0, dtype=np.float32)
        out = self.audio[begin:stop].copy()
        index = np.arange(begin, stop)
        length = (end if end is not None else stop + self.fade) - start  # unknown ends are >= 2 fades long
        fade = min(length // 2, self.fade)
        if fade:
            out *= np.minimum((index - start) / fade, 1.0).astype(np.float32)  # 0 on the first sample
            if end is not None:
                out *= np.minimum((end - 1 - index) / fade, 1.0).astype(np.float32)  # 0 on the last
        self.released = stop
        return out
