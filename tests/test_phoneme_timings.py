"""True phoneme timings: their file, matching Echo's tokens with eSpeak's phonemes, the boundary error, align.py."""

import json

import numpy as np
import pytest
import torch

from codec.interface import CodecIdentity
from data.frontend import TextFrontend
from data.phoneme_timings import (
    PAUSE,
    BoundaryMatch,
    PhonemeTiming,
    UtteranceTimings,
    base_phoneme,
    boundary_errors,
    match_phonemes,
    read_timings,
    summarize_boundary_errors,
    write_timings,
)
from data.phonemes import is_phone_token
from data.tokens import TokenCorpus, TokenShardWriter, write_durations
from recipes import align

RATE = 50.0  # frames a second
# "Hello, world" as Echo's tokens, and the frames the aligner might give each of them
SYMBOLS = ["<en-us>", "<bos>", "h", "ə", "l", "ˈ", "oʊ", ",", "|", "w", "ˈ", "ɜː", "l", "d", "<eos>"]
DURATIONS = [1, 4, 3, 2, 3, 1, 6, 8, 1, 3, 1, 7, 3, 2, 5]


def starts(durations):
    return np.concatenate([[0], np.cumsum(durations)])[:-1]


def true_timings(shift_frames: float = 0.0) -> list[PhonemeTiming]:
    """eSpeak's view of the same utterance, with every phoneme starting where DURATIONS put it (+ a shift):
    a stressed vowel where its stress mark starts, "w" where the word boundary starts, a pause for the comma."""
    first = starts(DURATIONS)
    named = [("h", 2), ("ə", 3), ("l", 4), ("ˈoʊ", 5), (PAUSE, 7), ("w", 8), ("ˈɜː", 10), ("l", 12), ("d", 13)]
    times = [(first[k] + shift_frames) / RATE for _, k in named] + [(first[14] + shift_frames) / RATE]
    return [PhonemeTiming(name, start, end) for (name, _), start, end in zip(named, times[:-1], times[1:])]


def test_symbols_are_reduced_to_their_base_and_sorted_into_sounds():
    assert [base_phoneme(s) for s in ("ˈɜː", "ˌaɪ", "n̩", "dʒ", "ɚ")] == ["ɜ", "aɪ", "n", "dʒ", "ɚ"]
    assert [is_phone_token(s) for s in ("oʊ", "ˈ", "|", ",", "…", "<bos>", "<en-us>", "<unk>")] == [
        True, False, False, False, False, False, False, False
    ]


def test_matching_pairs_equal_phonemes_and_like_with_like():
    same = ["h", "ə", "l", "oʊ"]
    assert match_phonemes(same, ["h", "ə", "l", "ˈoʊ"]) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    # a Scottish voice: "w ˈʌɹ l d" for en-us "w ˈɜː l d"; an extra consonant and a dropped one
    assert match_phonemes(["w", "ɜː", "l", "d"], ["w", "ˈʌɹ", "l", "d"]) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert match_phonemes(["s", "t", "ɑː", "p"], ["s", "ɑː", "p", "s"]) == [(0, 0), (2, 1), (3, 2)]
    assert match_phonemes(["a", "i"], ["p", "t"]) == []  # a vowel is never paired with a consonant
    assert match_phonemes([], ["a"]) == []


def test_boundary_error_is_zero_for_the_true_boundaries_and_the_shift_for_shifted_ones():
    exact = boundary_errors(SYMBOLS, DURATIONS, true_timings(), RATE)
    assert exact.n_phonemes == 8 and exact.errors == pytest.approx([0.0] * 8, abs=1e-9)
    shifted = boundary_errors(SYMBOLS, DURATIONS, true_timings(shift_frames=2.5), RATE)
    assert shifted.errors == pytest.approx([2.5] * 8) and shifted.offsets == pytest.approx([-2.5] * 8)
    late = list(DURATIONS)
    late[1] += 2  # <bos> takes two frames more: "h" starts 2 frames late, and so does everything after it
    late[-1] -= 2
    assert boundary_errors(SYMBOLS, late, true_timings(), RATE).errors == pytest.approx([2.0] * 8)
    summary = summarize_boundary_errors([exact, boundary_errors(SYMBOLS, late, true_timings(), RATE)])
    assert summary == pytest.approx({"utterances_with_timings": 2, "boundary_error_frames": 1.0,
                                     "boundary_error_frames_median": 1.0, "boundary_offset_frames": 1.0,
                                     "boundaries_matched": 1.0})
    with pytest.raises(ValueError, match="durations"):
        boundary_errors(SYMBOLS, DURATIONS[:-1], true_timings(), RATE)


def test_unmatched_boundaries_count_against_the_share_and_no_timings_give_no_error():
    extra = true_timings()
    glottal_stop = PhonemeTiming("ʔ", extra[2].end - 0.02, extra[2].end)  # a phoneme Echo's tokens lack
    extra[2:3] = [PhonemeTiming("l", extra[2].start, glottal_stop.start), glottal_stop]
    match = boundary_errors(SYMBOLS, DURATIONS, extra, RATE)
    assert len(match.errors) == 8 and match.n_phonemes == 9
    assert summarize_boundary_errors([match])["boundaries_matched"] == pytest.approx(8 / 9)
    assert summarize_boundary_errors([]) == {"utterances_with_timings": 0}
    nothing = BoundaryMatch(np.zeros(0), 0)
    assert summarize_boundary_errors([nothing]) == {"utterances_with_timings": 1}


def test_timings_file_round_trips_and_rejects_bad_lines(tmp_path):
    utterances = [UtteranceTimings("u0", "Hello, world", tuple(true_timings())), UtteranceTimings("u1", "Hi.", ())]
    path = write_timings(tmp_path / "phoneme_timings.jsonl", utterances)
    back = read_timings(path)
    assert list(back) == ["u0", "u1"] and back["u1"].phonemes == ()
    assert [p.phoneme for p in back["u0"].phonemes] == [p.phoneme for p in utterances[0].phonemes]
    assert [p.start for p in back["u0"].phonemes] == pytest.approx([p.start for p in utterances[0].phonemes])
    for line, message in (
        ("not json", "not valid JSON"),
        ('{"id": "u", "text": "x"}', "needs"),
        ('{"id": "u", "text": "x", "phonemes": [["a", 0.2, 0.1]]}', "not in order"),
        ('{"id": "u", "text": "x", "phonemes": [["a", 0.1, 0.2], ["b", 0.15, 0.3]]}', "not in order"),
        ('{"id": "u", "text": "x", "phonemes": [["a", "0.1", 0.2]]}', r"\[name, start seconds, end seconds\]"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=message):
            read_timings(bad)
    with pytest.raises(FileNotFoundError, match="prepare_data.py synthetic"):
        read_timings(tmp_path / "missing.jsonl")


def test_align_recipe_reports_the_error_against_the_timings(tmp_path, one_thread):
    texts = {"u0": "Hello, world", "u1": "Nice weather.", "u2": "Good night."}
    frontend = TextFrontend.build(list(texts.values()))
    identity = CodecIdentity(name="echo", config_hash="0" * 16, sample_rate=16000, frame_rate=RATE, n_q=2,
                             codebook_size=32)
    tokens = tmp_path / "tokens"
    with TokenShardWriter(tokens, identity, frontend) as writer:
        for utt_id, text in texts.items():
            ids = frontend.encode(text, "en-us")
            T = 60 if utt_id == "u0" else 3 * len(ids)
            writer.add(utt_id, torch.randint(0, 32, (2, T)), torch.tensor(ids), speaker="s", duration=T / RATE,
                       text=text)
    corpus = TokenCorpus.open(tokens)
    assert corpus.vocab.decode(corpus[0].text.tolist()) == SYMBOLS  # the layout the made-up timings follow
    truth = {"u0": UtteranceTimings("u0", texts["u0"], tuple(true_timings())),
             "u2": UtteranceTimings("u2", "Another text.", ())}  # u1 has none; u2's are another utterance's
    write_durations(tokens, corpus.records[0].shard, torch.cat([
        torch.tensor(DURATIONS), torch.full((corpus.records[1].n_text_tokens + corpus.records[2].n_text_tokens,), 3)
    ]))
    assert align.timing_error(TokenCorpus.open(tokens), truth) == pytest.approx({
        "utterances_with_timings": 1, "boundary_error_frames": 0.0, "boundary_error_frames_median": 0.0,
        "boundary_offset_frames": 0.0, "boundaries_matched": 1.0,
    }, abs=1e-9)
    timings = write_timings(tmp_path / "corpus" / "phoneme_timings.jsonl", truth.values())
    run_dir = tmp_path / "aligner"
    stats = align.main(["--tokens", str(tokens), "--run_dir", str(run_dir), "--steps", "2", "--warmup_steps", "1",
                        "--d_model", "16", "--n_layers", "1", "--align_dim", "8"])  # finds corpus/ beside tokens/
    assert stats["utterances_with_timings"] == 1 and 0 < stats["boundaries_matched"] <= 1
    assert stats["boundary_error_frames"] >= 0 and json.loads((run_dir / "alignment.json").read_text()) == stats
    timings.unlink()
    assert "boundary_error_frames" not in align.main(["--tokens", str(tokens), "--run_dir", str(run_dir), "--resume"])
    with pytest.raises(FileNotFoundError, match="no phoneme timings"):
        align.main(["--tokens", str(tokens), "--run_dir", str(run_dir), "--resume", "--timings", str(timings)])
