"""The NAR of a codec with a pitch stream predicts F0 relative to the prompt's register (lm/nar.py)."""

import pytest
import torch

from codec.interface import CodecIdentity
from codec.pitch import pitch_agreement
from data.lm_data import LMBatch
from lm.nar import NARConfig, NARModel, from_register, pitch_register, to_register
from recipes.train_lm import validate

V, C, K, BINS = 24, 32, 4, 16  # text vocabulary, code space, rows (codebook 1, F0, codebooks 2-3), pitch codes
PITCH_CODEC = CodecIdentity(name="echo", config_hash="0123456789abcdef", sample_rate=16000, frame_rate=50.0,
                            n_q=K, codebook_size=C, pitch_bins=BINS)
TINY = dict(text_vocab_size=V, codebook_size=C, n_q=K, d_model=32, n_heads=4, n_layers=2, ffn_dim=64, dropout=0.0)


def pitch_nar() -> NARModel:
    torch.manual_seed(0)
    return NARModel(NARConfig(**TINY, codec=PITCH_CODEC.to_dict())).eval()


def pitch_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two items whose pitch rows hold voiced codes 5..10 and some unvoiced frames."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, C, (2, K, 6), generator=g)
    codes = torch.randint(0, C, (2, K, 8), generator=g)
    for rows in (prompt, codes):
        rows[:, 1] = torch.randint(5, 11, rows[:, 1].shape, generator=g)
        rows[:, 1, ::3] = 0
    return dict(text=torch.randint(4, V, (2, 7), generator=g), text_lengths=torch.tensor([7, 5]), prompt=prompt,
                prompt_lengths=torch.tensor([6, 4]), codes=codes, code_lengths=torch.tensor([8, 6]))


def test_identity_without_pitch_reads_and_writes_as_before():
    plain = CodecIdentity("echo", "0123456789abcdef", 16000, 50.0, 4, 512)
    assert "pitch_bins" not in plain.to_dict()  # models and tokens made before the pitch stream compare equal
    assert CodecIdentity.from_dict(plain.to_dict()) == plain
    assert CodecIdentity.from_dict(PITCH_CODEC.to_dict()).pitch_bins == BINS
    with pytest.raises(ValueError, match="pitch_bins"):
        plain.check_compatible(CodecIdentity(**{**plain.to_dict(), "pitch_bins": 64}))


def test_register_is_the_median_voiced_code_of_the_real_prompt_frames():
    pitch = torch.tensor([[0, 9, 7, 0, 12, 3], [0, 0, 0, 0, 0, 0], [5, 6, 0, 40, 40, 40]])
    valid = torch.tensor([[True] * 6, [True] * 6, [True, True, True, False, False, False]])
    assert pitch_register(pitch, valid, BINS).tolist() == [7, BINS // 2, 5]  # lower median; no voiced frame: middle
    assert pitch_register(pitch[:, :0], valid[:, :0], BINS).tolist() == [BINS // 2] * 3  # no prompt at all


def test_register_shift_round_trips_and_masks_what_it_cannot_reach():
    register = torch.tensor([3, 12])
    pitch = torch.tensor([[0, 1, 3, 9], [0, 12, 15, 4]])
    relative = to_register(pitch, register, BINS)
    assert relative.tolist() == [[0, 6, 8, 14], [0, 8, 11, 1]]  # 0 stays unvoiced; the register goes to BINS // 2
    logits = torch.nn.functional.one_hot(relative, C).float()  # [2, 4, C]: sure of each relative code
    absolute = from_register(logits, register, BINS)
    assert absolute.argmax(-1).tolist() == [[0, 1, 3, 9], [0, 12, 15, 5]]  # 4 is out of register 12's reach: 5
    probabilities = absolute.softmax(-1)
    assert probabilities[..., BINS:].max() == 0  # never a code outside the pitch codes
    assert probabilities[1, :, 1:12 + 1 - BINS // 2].max() == 0  # register 12 reaches codes 5..15 only
    assert torch.all(absolute[..., 0] == logits[..., 0])


def test_prompt_register_moves_the_predicted_pitch_with_it():
    """Raising every voiced pitch code of prompt and target by 3 raises the predicted pitch by 3 and
    leaves the later stages' predictions as they were: the network sees the contour, not the register."""
    model, x = pitch_nar(), pitch_batch()
    higher = {k: v.clone() for k, v in x.items()}
    for rows in (higher["prompt"], higher["codes"]):
        rows[:, 1] = torch.where(rows[:, 1] > 0, rows[:, 1] + 3, 0)
    below = dict(codes=x["codes"][:, :1])
    with torch.no_grad():
        low = model.predict(**{**x, **below}, stage=2)
        high = model.predict(**{**higher, "codes": higher["codes"][:, :1]}, stage=2)
        assert torch.allclose(low[..., 4:BINS - 3], high[..., 7:BINS])
        assert torch.allclose(low[..., 0], high[..., 0])
        assert torch.allclose(model.predict(**x, stage=3), model.predict(**higher, stage=3))


def test_pitch_loss_falls_and_a_label_out_of_reach_counts_as_the_nearest_code():
    model, x = pitch_nar(), pitch_batch()
    x["codes"][0, 1, 1] = BINS - 1  # 8 or more codes above the prompt's register of 5..10: beyond reach
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(**x, stage=2)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert torch.isfinite(torch.tensor(losses)).all()
    assert losses[-1] < 0.5 * losses[0]


def test_pitch_agreement_counts_voicing_and_semitones():
    bins = 64  # 0.56 semitones a code
    target = torch.tensor([[0, 10, 10, 10, 10, 0], [20, 20, 0, 0, 0, 0]])
    predicted = torch.tensor([[0, 10, 11, 13, 0, 5], [22, 21, 0, 0, 7, 7]])
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    frames, voicing, both, within = pitch_agreement(predicted, target, mask, bins).tolist()
    assert (frames, voicing, both) == (9, 7, 5)  # wrong voicing: frame 4 and 5 of item 1; pads not counted
    assert within == 3  # 0 and 1 code off (frames 1, 2 of item 1; frame 1 of item 2); 3 and 2 codes are over a semitone


def test_validation_reports_the_pitch_of_a_pitch_codec():
    model, x = pitch_nar(), pitch_batch()
    batch = LMBatch(**x, ids=["a", "b"], speakers=["s", "s"], prompt_modes=["speaker"] * 2)
    figures, _ = validate({"nar": model}, [batch], n_batches=1, n_q=K, device="cpu")
    assert 0 <= figures["nar/pitch/within_semitone"] <= 1
    predicted = model(**x, stage=2).logits.argmax(-1)
    voiced_right = ((predicted > 0) == (x["codes"][:, 1] > 0))[0].sum() + ((predicted > 0) == (x["codes"][:, 1] > 0))[1, :6].sum()
    assert figures["nar/pitch/voicing"] == pytest.approx(float(voiced_right) / 14)
    assert "nar/codebook_2/top1" in figures and "nar/pitch/voicing" not in validate(
        {"nar": NARModel(NARConfig(**TINY)).eval()}, [batch], n_batches=1, n_q=K, device="cpu")[0]


def test_without_a_prompt_the_register_is_the_middle_code():
    model, x = pitch_nar(), pitch_batch()
    empty = dict(prompt=torch.zeros(2, 0, 0, dtype=torch.long), prompt_lengths=torch.zeros(2, dtype=torch.long))
    with torch.no_grad():
        logits = model.predict(**{**x, **empty, "codes": x["codes"][:, :1]}, stage=2)
    assert logits.shape == (2, 8, C) and logits.softmax(-1)[..., BINS:].max() == 0
    assert torch.isfinite(model(**{**x, **empty}, stage=2).loss)
