"""The overfit ladder: tiny AR and NAR models memorize four fixed synthetic utterances.

A model that cannot learn one batch it sees over and over has a bug in how its inputs, labels
or loss are built; in real training that bug only shows as a loss that will not fall. Here each
model must reach top-1 >= 0.9 within a bounded number of Adam steps: the AR on codebook 1 and
EOS, the NAR on every codebook j = 2..K, each j measured on its own.

Codebook 1 is random; codebook j of a frame is a fixed permutation of codebook j - 1 of the same
frame, so a correct NAR needs only a lookup per frame. The rungs differ in what tells the four
utterances apart, so that a model blind to the input it should read cannot pass, however long
it trains:

- distinct: everything (text, prompt, length, codes), with padding in every block and one item
  without a prompt, as in the training batches.
- codes: only the target's codes (one text, prompt and length). The NAR at stage j must read
  the target's codebooks 1..j-1; blind to them (at j = 2, codebook 1 is all it has) it sees
  four identical inputs and stays near 0.3. The AR must read its earlier tokens, and its output
  at frame t must predict token t: the four share frame 0 and part at frame 1, a fork no AR can
  foresee (3 of 44 tokens: 0.93 at best); an AR one frame late meets the fork twice (0.86).
- prompt (NAR only): only the prompt's codebooks 2..K and, with them, the target's: the NAR
  must read every codebook of the prompt (reading codebook 1 alone leaves j = 2 at 0.25).

A label shifted by a frame is still learnable by the NAR, which sees every frame; the exact
labels are pinned in test_lm_models.py. Correct models reach the target in 5 to 20 steps; the
bound is 100. The file runs in about 2 s.
"""

import pytest
import torch

from lm.ar import ARConfig, ARModel
from lm.nar import NARConfig, NARModel

V, C, K = 24, 32, 4  # text vocabulary, codebook entries, codebooks
TINY = dict(text_vocab_size=V, codebook_size=C, n_q=K, d_model=32, n_heads=4, n_layers=2, ffn_dim=64, dropout=0.0)
TEXT_LENGTHS, PROMPT_LENGTHS, CODE_LENGTHS = [9, 6, 8, 7], [5, 3, 0, 4], [10, 14, 8, 12]
TARGET, LR, MAX_STEPS, CHECK_EVERY = 0.9, 1e-2, 100, 5

pytestmark = pytest.mark.usefixtures("one_thread")


def utterances(rung: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Four utterances, padded with 0 in every block; codebook j = perm_j[codebook j - 1] frame by frame.

    rung "distinct": every item its own text, prompt, length and codes.
    rung "codes": every item gets item 0's text, prompt and length (10 frames); only the target
    codes differ, and they fork after a common first frame: four different tokens at frames 1 and 2.
    rung "prompt": every item gets item 0's text, length, target codebook 1 and prompt codebook 1;
    only the prompt's codebooks 2..K differ, and with them the target's (shifted by b C / 4).
    """
    g = torch.Generator().manual_seed(seed)
    B, N, P, T = len(CODE_LENGTHS), max(TEXT_LENGTHS), max(PROMPT_LENGTHS), max(CODE_LENGTHS) + 2
    text_lengths, prompt_lengths, code_lengths = (torch.tensor(n) for n in (TEXT_LENGTHS, PROMPT_LENGTHS, CODE_LENGTHS))
    text = torch.randint(4, V, (B, N), generator=g)  # [B, N]
    prompt = torch.randint(0, C, (B, K, P), generator=g)  # [B, K, P]
    codes = torch.randint(0, C, (B, 1, T), generator=g).repeat(1, K, 1)  # [B, K, T]
    shift = torch.zeros(B, 1, dtype=torch.long)  # [B, 1]: added to the target's codebooks 2..K
    if rung in ("codes", "prompt"):
        text, text_lengths = text[:1].repeat(B, 1), text_lengths[:1].repeat(B)
        prompt_lengths, code_lengths = prompt_lengths[:1].repeat(B), code_lengths[:1].repeat(B)
    if rung == "codes":
        prompt = prompt[:1].repeat(B, 1, 1)
        codes[:, 0, 0] = codes[0, 0, 0]
        codes[:, 0, 1:3] = torch.randperm(C, generator=g)[:2 * B].view(B, 2)
    elif rung == "prompt":
        prompt[:, 0], codes[:, 0] = prompt[0, 0], codes[0, 0]
        shift = torch.arange(B)[:, None] * (C // B)
    elif rung != "distinct":
        raise ValueError(f"unknown rung {rung!r}")
    for j in range(1, K):
        codes[:, j] = (torch.randperm(C, generator=g)[codes[:, j - 1]] + shift) % C
    for b in range(B):
        text[b, text_lengths[b]:] = 0
        prompt[b, :, prompt_lengths[b]:] = 0
        codes[b, :, code_lengths[b]:] = 0
    return dict(text=text, text_lengths=text_lengths, prompt=prompt, prompt_lengths=prompt_lengths,
                codes=codes, code_lengths=code_lengths)


def overfit_ar(model: ARModel, x: dict[str, torch.Tensor]) -> tuple[int, float]:
    """Adam on the batch until top-1 >= TARGET or MAX_STEPS -> (steps taken, last top-1)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for step in range(1, MAX_STEPS + 1):
        loss = model.train()(**x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % CHECK_EVERY == 0:
            with torch.no_grad():
                top1 = model.eval()(**x).top1.item()
            if top1 >= TARGET:
                break
    return step, top1


def overfit_nar(model: NARModel, x: dict[str, torch.Tensor]) -> tuple[int, dict[int, float]]:
    """Adam on the batch with every stage j in each step, until top-1 >= TARGET on each j on its
    own or MAX_STEPS -> (steps taken, {j: last top-1})."""
    stages = list(model.config.stages)
    B = x["text"].shape[0]
    every_stage = {k: v.repeat(len(stages), *[1] * (v.dim() - 1)) for k, v in x.items()}  # the batch once per j
    stage = torch.tensor(stages).repeat_interleave(B)  # [(K - 1) B]
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for step in range(1, MAX_STEPS + 1):
        loss = model.train()(**every_stage, stage=stage).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % CHECK_EVERY == 0:
            with torch.no_grad():
                top1 = {j: model.eval()(**x, stage=j).top1.item() for j in stages}
            if min(top1.values()) >= TARGET:
                break
    return step, top1


@pytest.mark.parametrize("rung", ["distinct", "codes"])
def test_ar_memorizes_four_utterances(rung):
    torch.manual_seed(0)
    steps, top1 = overfit_ar(ARModel(ARConfig(**TINY)), utterances(rung))
    assert top1 >= TARGET, f"AR top-1 {top1:.3f} after {steps} steps"


@pytest.mark.parametrize("tie", [False, True], ids=["heads", "tied"])
@pytest.mark.parametrize("rung", ["distinct", "codes", "prompt"])
def test_nar_memorizes_every_codebook(rung, tie):
    torch.manual_seed(0)
    steps, top1 = overfit_nar(NARModel(NARConfig(**TINY, tie_output_embeddings=tie)), utterances(rung))
    assert min(top1.values()) >= TARGET, f"NAR top-1 per codebook {top1} after {steps} steps"
