"""The generation driver: the AR loop that writes codebook 1, and the NAR loop that fills the rest.

The networks (lm/ar.py, lm/nar.py) only turn inputs into logits; this module decides which
tokens to feed them and when to stop, with the pure sampling functions of lm/sampling.py
(moshi's `LMModel` / `LMGen` split).

    limits = length_limits(text_lengths, frame_rate)                     # (min [B], max [B]) frames
    ar = generate_ar(ar_model, text, text_lengths, prompt, prompt_lengths,
                     sampling=SamplingConfig(top_k=50), min_new_tokens=limits[0], max_new_tokens=limits[1],
                     generator=[torch.Generator().manual_seed(s) for s in seeds])
    codes = generate_nar(nar_model, text, text_lengths, prompt, prompt_lengths, ar.codes, ar.lengths)  # [B, K, T]

Letters: B batch, N text tokens, K codebooks, P prompt frames, T frames, C codebook size.

End of sequence. Each item stops at its own EOS, or after `max_new_tokens` frames without one
(`finished` tells which); EOS is masked out of the logits until the item has written
`min_new_tokens` frames. A finished item leaves the batch (`ARCache.select`), so the others
run on without it and nothing is computed for it any more.

Reproducibility. The same generator(s) give the same tokens, with or without the KV cache. Pass
one `torch.Generator` per item (a list) to sample each item from its own stream: an item then
gets the same tokens alone as in any batch, whatever the lengths of the others, because padding
is masked inside the models (tests/test_generation.py checks this). One shared generator is
reproducible for the same batch, but an item's draws then depend on its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Sequence

import torch

from lm.ar import ARCache, ARModel
from lm.layout import frame_mask
from lm.nar import NARModel
from lm.sampling import DEFAULT_CFG_SCALE, SamplingConfig, apply_temperature, guide, sample, sample_next

Generators = torch.Generator | Sequence[torch.Generator] | None

# -- how long an utterance may be ---------------------------------------------------------------

# Text tokens are phones, stress marks, punctuation and word boundaries (data/phonemes.py), about
# 17 of them per second of ordinary read English: 0.06 s a token. The limits scale that estimate.
SECONDS_PER_TOKEN = 0.06
MAX_SLOWDOWN = 3.0  # the longest an item may run: 3x the estimate (0.18 s a token, ~5.5 tokens/s)...
MARGIN_SECONDS = 1.0  # ...plus 1 s for pauses and trailing silence; short texts need it most
MIN_FRACTION = 0.3  # the shortest: 0.3x the estimate (0.018 s a token, ~55 tokens/s, faster than any speech)


def length_limits(text_lengths: torch.Tensor, frame_rate: float, prompt_text_lengths: torch.Tensor | None = None, *,
                  seconds_per_token: float = SECONDS_PER_TOKEN, max_slowdown: float = MAX_SLOWDOWN,
                  margin_seconds: float = MARGIN_SECONDS, min_fraction: float = MIN_FRACTION,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames an item must and may write for its text: (min_new_tokens [B], max_new_tokens [B]).

    text_lengths [B]: text tokens per item. When the text holds the prompt's transcript before
    the new text (VALL-E's continuation), pass its length as `prompt_text_lengths` [B]: only the
    rest is still to be spoken. With estimate = tokens x seconds_per_token x frame_rate,

        max = ceil(estimate x max_slowdown + margin_seconds x frame_rate)   (always >= 1)
        min = floor(estimate x min_fraction)                                 (always < max)

    The maximum guarantees that generation ends; the minimum only stops the degenerate EOS in
    the first frames, and sits well below the duration of any real speech of that text.
    """
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be positive, got {frame_rate}")
    if min(seconds_per_token, max_slowdown, margin_seconds, min_fraction) < 0 or min_fraction >= max_slowdown:
        raise ValueError("length_limits needs non-negative settings and min_fraction < max_slowdown")
    tokens = text_lengths.long()
    if prompt_text_lengths is not None:
        tokens = tokens - prompt_text_lengths.long().to(tokens.device)
    estimate = tokens.clamp(min=1).double() * seconds_per_token * frame_rate  # frames
    slack = 1e-6  # so that float noise never moves a whole frame (60 x 0.06 x 50 is 179.99999999999997)
    high = (estimate * max_slowdown + margin_seconds * frame_rate - slack).ceil().long().clamp(min=1)
    low = torch.minimum((estimate * min_fraction + slack).floor().long(), high - 1)
    return low, high


# -- the AR loop ----------------------------------------------------------------------------------


@dataclass
class ARResult:
    """What `generate_ar` wrote, per item.

    codes [B, T]: codebook 1, T = the longest item; 0 after each item's `lengths[b]` frames (EOS
        is not among them).
    lengths [B]: frames written.
    logprob [B]: sum of the log-probabilities of the chosen tokens, EOS included when written,
        under the model's own distribution (temperature 1, no top-k/top-p, no EOS mask; guided by
        the text when `cfg_scale` > 1), for scoring best-of-N candidates.
    finished [B]: True where the item wrote EOS, False where it hit its maximum.
    logits [B, S, C + 1] (with `return_logits`): the raw (guided) logits each token was chosen from,
        S = max(lengths + finished) steps; 0 after an item's last step.
    alignment [B, T] (duration-guided models): the text index each frame was written for.
    """

    codes: torch.Tensor
    lengths: torch.Tensor
    logprob: torch.Tensor
    finished: torch.Tensor
    logits: torch.Tensor | None = None
    alignment: torch.Tensor | None = None

    @property
    def mean_logprob(self) -> torch.Tensor:
        """logprob per chosen token [B] (frames, plus EOS where written): comparable across lengths."""
        return self.logprob / (self.lengths + self.finished).clamp(min=1)


class _CachedDecoder:
    """Prefill [text] [prompt] [BOS] once, then one position per step from the KV cache."""

    def __init__(self, model: ARModel, text, text_lengths, prompt, prompt_lengths, reserve: int,
                 start_index: torch.Tensor | None = None):
        self.model, self.reserve, self.start_index = model, reserve, start_index
        self.inputs = (text, text_lengths, prompt, prompt_lengths)
        self.cache: ARCache | None = None

    def first(self) -> torch.Tensor:
        logits, self.cache = self.model.prefill(*self.inputs, max_new_tokens=self.reserve, start_index=self.start_index)
        return logits  # [B, C + 1]

    def next(self, tokens: torch.Tensor, advance: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.step(tokens, self.cache, advance)[0]  # [B, C + 1]

    def keep(self, index: torch.Tensor) -> None:
        self.cache.select(index)

    def pointer(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Duration-guided: (the text token the next frame speaks, text lengths, "move on" logits), each [A]."""
        return self.cache.text_index, self.cache.text_lengths, self.cache.advance_logits


class _GuidedDecoder(_CachedDecoder):
    """Classifier-free guidance: the cached decoder on one batch of 2A items, the real text and
    then the same text hidden (`ARModel.hide_text`). The hidden half is fed the real half's
    tokens and follows its pointer; only the guided logits and the real half's pointer come out."""

    def __init__(self, model: ARModel, text, text_lengths, prompt, prompt_lengths, reserve: int,
                 start_index: torch.Tensor | None, scale: float):
        def twice(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.cat([x, x])

        super().__init__(model, torch.cat([text, model.hide_text(text)]), twice(text_lengths), twice(prompt),
                         twice(prompt_lengths), reserve, twice(start_index))
        self.scale = scale

    def _guided(self, logits: torch.Tensor) -> torch.Tensor:
        conditional, unconditional = logits.float().chunk(2)
        return guide(conditional, unconditional, self.scale)

    def first(self) -> torch.Tensor:
        return self._guided(super().first())

    def next(self, tokens: torch.Tensor, advance: torch.Tensor | None = None) -> torch.Tensor:
        return self._guided(super().next(torch.cat([tokens, tokens]),
                                         None if advance is None else torch.cat([advance, advance])))

    def keep(self, index: torch.Tensor) -> None:
        super().keep(torch.cat([index, index + self.cache.batch_size // 2]))

    def pointer(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        A = self.cache.batch_size // 2
        return tuple(x[:A] for x in super().pointer())


def cached_decoder(model: ARModel, text: torch.Tensor, text_lengths: torch.Tensor, prompt: torch.Tensor,
                   prompt_lengths: torch.Tensor, reserve: int, start_index: torch.Tensor | None = None,
                   cfg_scale: float = 1.0) -> _CachedDecoder:
    """The KV-cached decoder of one generation: `first()` -> logits [B, C + 1] of the first frame, then
    `next(tokens [B], advance [B] | None)` -> the next ones, `keep(index)` to drop items and (duration-guided)
    `pointer()`; guided by the text when cfg_scale != 1 (`cfg_scale_for` checks that the model can be)."""
    if cfg_scale != 1.0:
        return _GuidedDecoder(model, text, text_lengths, prompt, prompt_lengths, reserve, start_index, cfg_scale)
    return _CachedDecoder(model, text, text_lengths, prompt, prompt_lengths, reserve, start_index)


class _FullDecoder:
    """No cache: every step runs the whole sequence again (for tests and benchmarks)."""

    def __init__(self, model: ARModel, text, text_lengths, prompt, prompt_lengths, reserve: int):
        self.model = model
        self.inputs = [text, text_lengths, prompt, prompt_lengths]
        self.codes = text.new_zeros(text.shape[0], 0, dtype=torch.long)  # [B, t]: written so far

    def first(self) -> torch.Tensor:
        return self.model.prefill(*self.inputs)[0]  # the full forward of [text] [prompt] [BOS]

    def next(self, tokens: torch.Tensor, advance: torch.Tensor | None = None) -> torch.Tensor:
        self.codes = torch.cat([self.codes, tokens[:, None]], 1)
        B, t = self.codes.shape
        logits = self.model(*self.inputs, self.codes[:, None], self.codes.new_full((B,), t)).logits  # [B, t + 1, C + 1]
        return logits[:, t]  # the position after the last code predicts the next token

    def keep(self, index: torch.Tensor) -> None:
        self.inputs = [x[index] for x in self.inputs]
        self.codes = self.codes[index]


@dataclass
class ARProgress:
    """What `iter_ar` has written so far: codes [B, T_max] (valid up to `lengths`), lengths [B].

    The tensors are the loop's own buffers, updated in place at the next step: copy what you keep.
    """

    codes: torch.Tensor
    lengths: torch.Tensor


def generate_ar(
    model: ARModel,
    text: torch.Tensor,
    text_lengths: torch.Tensor,
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    **options,
) -> ARResult:
    """Write codebook 1 for each item: text [B, N], prompt [B, K, P] (codebook 1 is read) -> ARResult.
    The options are `iter_ar`'s; this runs its loop to the end."""
    steps = iter_ar(model, text, text_lengths, prompt, prompt_lengths, **options)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


@torch.no_grad()
def iter_ar(
    model: ARModel,
    text: torch.Tensor,
    text_lengths: torch.Tensor,
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    max_new_tokens: int | torch.Tensor | None = None,
    min_new_tokens: int | torch.Tensor = 0,
    generator: Generators = None,
    use_cache: bool = True,
    return_logits: bool = False,
    start_index: torch.Tensor | None = None,
) -> Generator[ARProgress, None, ARResult]:
    """`generate_ar` one frame at a time: yields an ARProgress after every step, returns the ARResult.

    Streaming synthesis reads the frames while the loop is still writing (app/tts.py).

    max_new_tokens: int or LongTensor [B], >= 1; None takes `length_limits`' maximum for the
        whole text at the frame rate of the codec recorded in the model's config.
    min_new_tokens: int or LongTensor [B]; EOS is impossible before this many frames.
    generator: None, one torch.Generator, or a list of B generators (one per item: the item's
        tokens then do not depend on the rest of the batch).
    use_cache: False recomputes the full forward at every step; same tokens, much slower.
    sampling.cfg_scale > 1 (classifier-free guidance; None takes `cfg_scale_for`'s default) runs each
        item twice, with its text and with it hidden, so each step costs about twice as much; it
        needs an AR trained with `text_dropout` and the KV cache.
    start_index [B] (duration-guided models): the text token the first frame speaks, i.e. the
        length of the prompt's transcript at the head of the text (0 without one). Such a model
        never writes EOS: each frame draws "move on to the next token" from its advance head,
        and the item ends on the frame that moves past its last token.
    """
    if model.training:
        raise ValueError("generate_ar needs the model in eval mode (dropout would make it random): call model.eval()")
    B, device = text.shape[0], text.device
    if max_new_tokens is None:
        identity = model.config.codec_identity
        if identity is None:
            raise ValueError("max_new_tokens is needed: the model's config records no codec, so no frame rate "
                             "to derive it from (see length_limits)")
        max_new_tokens = length_limits(text_lengths, identity.frame_rate)[1]
    high = _per_item("max_new_tokens", max_new_tokens, B, device)
    low = _per_item("min_new_tokens", min_new_tokens, B, device)
    if B and high.min() < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {high.tolist()}")
    if B and (low < 0).any() | (low > high).any():
        raise ValueError(f"min_new_tokens must lie in [0, max_new_tokens], got {low.tolist()} "
                         f"with max_new_tokens {high.tolist()}")
    generators = _generators(generator, B)
    eos = model.config.eos_id
    guided = model.config.duration_guided
    if guided and not use_cache:
        raise ValueError("a duration-guided AR generates with its KV cache only (use_cache=True)")
    cfg_scale = cfg_scale_for(model, sampling)
    if cfg_scale != 1.0 and not use_cache:
        raise ValueError("classifier-free guidance generates with the KV cache only (use_cache=True)")

    T_max = int(high.max()) if B else 0
    codes = torch.zeros(B, T_max, dtype=torch.long, device=device)
    alignment = torch.zeros(B, T_max, dtype=torch.long, device=device) if guided else None
    lengths = torch.zeros(B, dtype=torch.long, device=device)
    logprob = torch.zeros(B, dtype=torch.float, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    all_logits = torch.zeros(B, T_max, eos + 1, device=device) if return_logits else None
    steps = 0
    if B:
        if use_cache:
            decoder = cached_decoder(model, text, text_lengths, prompt, prompt_lengths, T_max, start_index, cfg_scale)
        else:
            decoder = _FullDecoder(model, text, text_lengths, prompt, prompt_lengths, T_max)
        active = torch.arange(B, device=device)  # the items still writing, in decoder order
        logits = decoder.first()
        advance = None
        for t in range(T_max):
            raw = logits.float()  # [A, C + 1]
            if return_logits:
                all_logits[active, t] = raw
            no_eos = _is_eos(raw) if guided else (t < low[active])[:, None] & _is_eos(raw)
            allowed = raw.masked_fill(no_eos, float("-inf"))
            tokens = _choose(allowed, codes[active, :t], sampling, generators, active)  # [A]
            logprob[active] += raw.log_softmax(-1).gather(1, tokens[:, None])[:, 0]
            if guided:  # this frame is real; moving past the last token ends the item after it
                index, n_tokens, advance_logits = decoder.pointer()
                alignment[active, t] = index
                advance = _draw_advance(advance_logits, generators, active)  # [A]
                at_last = index == n_tokens - 1
                wrote_eos = advance & at_last & (t + 1 >= low[active])
            else:
                wrote_eos = tokens == eos
            eos_written = torch.zeros_like(wrote_eos) if guided else wrote_eos  # an EOS token is no frame
            codes[active, t] = tokens.masked_fill(eos_written, 0)
            lengths[active] = t + 1 - eos_written.long()
            finished[active] = wrote_eos
            steps = t + 1
            yield ARProgress(codes, lengths)
            done = wrote_eos | (t + 1 >= high[active])
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero()[:, 0]
                decoder.keep(keep)
                active, tokens = active[keep], tokens[keep]
                advance = advance[keep] if advance is not None else None
            logits = decoder.next(tokens, advance)
    T = int(lengths.max()) if B else 0
    return ARResult(codes[:, :T], lengths, logprob, finished, all_logits[:, :steps] if return_logits else None,
                    alignment[:, :T] if guided else None)


def cfg_scale_for(model: ARModel, sampling: SamplingConfig) -> float:
    """The classifier-free guidance scale `iter_ar` samples with: the sampling's, or (None) the model's own."""
    if sampling.cfg_scale is None:
        return DEFAULT_CFG_SCALE if model.config.guidable else 1.0
    if sampling.cfg_scale != 1.0 and not model.config.guidable:
        raise ValueError(f"cfg_scale {sampling.cfg_scale} needs an AR trained with text_dropout > 0 (it never learned "
                         "what to say without its text): use cfg_scale 1, or train with --ar.text_dropout 0.1")
    return sampling.cfg_scale


def _draw_advance(logits: torch.Tensor, generators: torch.Generator | list[torch.Generator] | None,
                  active: torch.Tensor) -> torch.Tensor:
    """Bernoulli(sigmoid(logits)) per active item [A] -> bool [A], from each item's own generator."""
    p = torch.sigmoid(logits.float())
    if isinstance(generators, list):
        u = torch.cat([torch.rand(1, generator=generators[b], device=p.device) for b in active.tolist()])
    else:
        u = torch.rand(p.shape, generator=generators, device=p.device)
    return u < p


def _is_eos(logits: torch.Tensor) -> torch.Tensor:
    """[1, C + 1] bool, True on the EOS column (the last)."""
    column = torch.zeros(1, logits.shape[1], dtype=torch.bool, device=logits.device)
    column[0, -1] = True
    return column


def _choose(logits: torch.Tensor, history: torch.Tensor, sampling: SamplingConfig,
            generators: torch.Generator | list[torch.Generator] | None, active: torch.Tensor) -> torch.Tensor:
    """The next token of each active item: logits [A, C + 1], history [A, t] -> [A]."""
    if not isinstance(generators, list):
        return sample_next(logits, history, sampling, generators)
    return torch.cat([
        sample_next(logits[i:i + 1], history[i:i + 1], sampling, generators[b])
        for i, b in enumerate(active.tolist())
    ])


def _per_item(name: str, value: int | torch.Tensor, B: int, device: torch.device) -> torch.Tensor:
    """An int or a [B] integer tensor -> LongTensor [B] on `device`."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool or value.shape != (B,):
            raise ValueError(f"{name} must be an int or an integer tensor of shape [B] = [{B}], "
                             f"got {value.dtype} {tuple(value.shape)}")
        return value.long().to(device)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int or an integer tensor of shape [B], got {value!r}")
    return torch.full((B,), value, dtype=torch.long, device=device)


def _generators(generator: Generators, B: int) -> torch.Generator | list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != B or not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(f"generator must be None, a torch.Generator, or a list of B = {B} of them "
                         f"(one per item), got {len(generators)} items")
    return generators


# -- the NAR loop ---------------------------------------------------------------------------------


@torch.no_grad()
def generate_nar(
    model: NARModel,
    text: torch.Tensor,
    text_lengths: torch.Tensor,
    prompt: torch.Tensor,
    prompt_lengths: torch.Tensor,
    codes1: torch.Tensor,
    lengths: torch.Tensor,
    *,
    temperature: float = 0.0,
    generator: Generators = None,
    return_probabilities: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fill codebooks 2..K, one stage at a time, each from the codebooks below it.

    codes1 [B, T] or [B, 1, T]: codebook 1 (e.g. `ARResult.codes`), lengths [B] frames per item
    (0 is allowed: the item gets no codes). temperature 0 takes the most likely code; above 0
    samples from softmax(logits / temperature) with `generator` (one, or one per item).
    Returns LongTensor [B, K, T]: codebook 1 as given, the rest 0 after each item's length.
    With `return_probabilities`, also float32 [B, K, T, C]: the model's distribution over each
    frame's code in codebooks 2..K, one-hot for codebook 1 (for `Codec.decode_expected`).
    """
    if model.training:
        raise ValueError("generate_nar needs the model in eval mode (dropout would make it random): call model.eval()")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 takes the most likely code), got {temperature}")
    if codes1.dim() == 3:
        if codes1.shape[1] != 1:
            raise ValueError(f"codes1 must be [B, T] or [B, 1, T] (codebook 1 only), got {tuple(codes1.shape)}")
        codes1 = codes1[:, 0]
    if codes1.dim() != 2:
        raise ValueError(f"codes1 must be [B, T] or [B, 1, T], got {tuple(codes1.shape)}")
    B, T = codes1.shape
    K = model.config.n_q
    generators = _generators(generator, B)
    codes = codes1.new_zeros(B, K, T, dtype=torch.long)  # [B, K, T]
    codes[:, 0] = codes1
    probabilities = torch.zeros(B, K, T, model.config.codebook_size, device=codes.device) if return_probabilities \
        else None
    if B == 0 or T == 0:
        return (codes, probabilities) if return_probabilities else codes
    real = frame_mask(lengths.to(codes.device), T)  # [B, T]
    model_lengths = lengths.clamp(min=1)  # the model needs a frame; an empty item's outputs are dropped
    for j in model.config.stages:
        below = codes[:, :j - 1]  # [B, j - 1, T]: codebooks 1..j-1
        logits = model.predict(text, text_lengths, prompt, prompt_lengths, below, model_lengths, j)  # [B, T, C]
        if temperature == 0:
            tokens = logits.argmax(-1)
        elif isinstance(generators, list):
            tokens = torch.stack([sample(apply_temperature(logits[b].float(), temperature), g)
                                  for b, g in enumerate(generators)])
        else:
            flat = apply_temperature(logits.float().flatten(0, 1), temperature)  # [B T, C]
            tokens = sample(flat, generators).view(B, T)
        codes[:, j - 1] = tokens.masked_fill(~real, 0)
        if probabilities is not None:
            probabilities[:, j - 1] = logits.float().softmax(-1)
    if probabilities is None:
        return codes
    probabilities[:, 0].scatter_(-1, codes[:, 0, :, None], 1.0)
    return codes, probabilities
