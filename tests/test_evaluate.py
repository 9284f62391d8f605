import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import app.meters as meters
from app.evaluation import (ALL, CODEC, CODEC_1, GROUND_TRUTH, NAR_ON_RECORDING, QUICKSTART_TARGETS, RELEASE_TARGETS,
                            TARGETS, ItemResult, Meters, Rendering, TTSReport, _synthesize_items,
                            choose_items, evaluate_item, read_voice_families, summarize, summarize_items,
                            synthesis_attention, wer_ratio_interval)
from app.figures import curve_group, read_scalars
from app.meters import (ErrorCount, MeterUnavailable, char_errors, cosine_similarity, load_asr, load_speaker,
                        normalize_for_scoring, word_error_rate, word_errors)
from app.scoring import Scorer
from app.tts import DEFAULT_SAMPLING, TTS
from data.audio import load_audio
from data.manifest import Utterance, read_manifest, write_manifest
from data.synthetic import build_synthetic_corpus
from lm.aligner import Aligner, AlignerConfig
from lm.ar import ARConfig, ARModel
from lm.sampling import DEFAULT_CFG_SCALE, guide
from conftest import build_tiny_model
from recipes import diagnose_ar, evaluate

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

pytestmark = pytest.mark.usefixtures("one_thread")


# -- error rates -----------------------------------------------------------------------------------


def test_normalization_spells_numbers_and_drops_case_and_punctuation():
    assert normalize_for_scoring("Dr. Smith paid $5 in 1984!") == normalize_for_scoring("dr smith paid five dollars "
                                                                                       "in nineteen eighty-four")
    assert normalize_for_scoring("It's  TWO, o'clock.") == "it s two o clock"
    assert normalize_for_scoring("?!") == ""


def test_word_and_character_error_rates():
    assert word_error_rate("The cat sat on the mat.", "the cat sat on the mat") == 0.0
    assert word_errors("the cat sat on the mat", "the cat sat on mat").errors == 1  # one deletion
    assert word_errors("the cat sat", "a cat sat down") == ErrorCount(2, 3)  # a substitution and an insertion
    assert word_error_rate("two dogs", "2 dogs") == 0.0  # numbers as words on both sides
    assert word_error_rate("one two", "") == 1.0
    assert word_errors("", "hello") == ErrorCount(1, 0) and ErrorCount(1, 0).rate == 1.0
    assert ErrorCount(0, 0).rate == 0.0
    assert char_errors("abc", "abd") == ErrorCount(1, 3)
    total = word_errors("a b c d", "a b c d") + word_errors("a b", "x b")
    assert total == ErrorCount(1, 6)  # corpus-level: summed errors over summed reference words


# -- meters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, module, loader", [("pocketsphinx", "pocketsphinx", load_asr),
                                                  ("resemblyzer", "resemblyzer", load_speaker)])
def test_a_missing_meter_package_says_how_to_install_it(monkeypatch, spec, module, loader):
    monkeypatch.setitem(sys.modules, module, None)  # the import fails as if it were not installed
    with pytest.raises(MeterUnavailable, match=rf"{module} is not installed.*pip install 'echo-tts\[eval\]'"):
        loader(spec)


def test_meter_errors_are_clear(tmp_path):
    error = ImportError("No module named 'pkg_resources'", name="pkg_resources")
    assert "setuptools<81" in str(meters._missing("resemblyzer", error))
    with pytest.raises(MeterUnavailable, match="cannot load the Whisper ASR"):
        load_asr(str(tmp_path / "no-whisper"))
    with pytest.raises(MeterUnavailable, match="English only"):
        load_asr("pocketsphinx", language="de")
    with pytest.raises(MeterUnavailable, match="x-vector"):
        load_speaker(str(tmp_path / "no-wavlm"))


def test_pocketsphinx_hears_each_clip_as_a_fresh_decoder_would(corpus):
    """Its decoder adapts to what it heard; a transcript must not depend on the clips heard before it,
    nor on which of the parallel workers heard it."""
    pytest.importorskip("pocketsphinx")
    recordings = [load_audio(u.audio_path) for u in read_manifest(corpus / "test.jsonl")[:2]]
    clips = [(wav[0, : 2 * rate], rate) for wav, rate in recordings]  # 2 s each: pocketsphinx is slow
    clips.append((clips[0][0] * 0.05, clips[0][1]))  # the same words, quietly: the features differ most
    fresh = [meters.PocketSphinxASR(workers=1).transcribe(wav, rate) for wav, rate in clips]
    asr = meters.PocketSphinxASR(workers=1)
    assert [asr.transcribe(wav, rate) for wav, rate in reversed(clips)] == fresh[::-1]
    assert meters.PocketSphinxASR(workers=2).transcribe_many(clips) == fresh
    assert meters.transcribe_all(asr, clips[:2]) == fresh[:2]


def test_xvector_speaker_meter_from_a_local_wavlm(tmp_path):
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    config = WavLMConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, tdnn_dim=(8, 8), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1),
                         xvector_output_dim=8, num_buckets=8, max_bucket_distance=20)
    WavLMForXVector(config).save_pretrained(tmp_path / "wavlm")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "wavlm")
    meter = load_speaker(str(tmp_path / "wavlm"))
    wav = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    a, b = meter.embed(wav, 24000), meter.embed(torch.from_numpy(wav), 24000)
    assert a.shape == (8,) and np.isclose(np.linalg.norm(a), 1.0)
    assert cosine_similarity(a, b) == pytest.approx(1.0)


def utterance(speaker: str, k: int, duration: float) -> Utterance:
    return Utterance(f"{speaker}_{k}", f"/x/{speaker}_{k}.flac", f"text {k}", speaker, duration)


def test_voice_families_come_from_speakers_json(tmp_path):
    (tmp_path / "speakers.json").write_text(json.dumps({"speakers": [{"id": "s1", "engine": "flite"}, {"id": "s2"}]}))
    assert read_voice_families(tmp_path / "speakers.json") == {"s1": "flite", "s2": "unknown"}
    (tmp_path / "speakers.json").write_text("[]")
    with pytest.raises(ValueError, match="no 'speakers' list"):
        read_voice_families(tmp_path / "speakers.json")


def test_items_cover_the_voices_first_with_deterministic_prompts():
    pool = [utterance("a", k, 2.5 + k) for k in range(4)] + [utterance("b", k, 3.5) for k in range(3)] + \
           [utterance("lonely", 0, 4.0)]
    items = choose_items(pool, {"a": "flite"}, max_items=3, seed=0)
    assert [i.target.id for i in items] == ["a_0", "b_0", "a_1"]  # round-robin; a single-utterance voice is left out
    assert all(i.prompt.speaker == i.target.speaker and i.prompt.id != i.target.id for i in items)
    assert all(i.prompt.duration >= 3.0 for i in items)
    assert [i.family for i in items] == ["flite", "unknown", "flite"]
    again = choose_items(pool, max_items=3, seed=0)
    assert [(i.prompt.id, i.seed) for i in again] == [(i.prompt.id, i.seed) for i in items]  # same seed, same items
    assert len(choose_items(pool)) == 7


def test_training_curves_are_read_from_tensorboard_logs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for name, start in (("first", 0), ("resumed", 2)):  # a resumed run logs its steps again into a new file
        with SummaryWriter(tmp_path / "run" / "logs" / "lm", filename_suffix=name) as writer:
            for step in range(start, start + 3):
                writer.add_scalar("train/ar/loss", 5.0 - step + (0.5 if name == "resumed" else 0), step)
                writer.add_scalar("val/nar/codebook_2/loss", 4.0, step)
    curves = read_scalars(tmp_path / "run")
    assert [step for step, _ in curves["train/ar/loss"]] == [0, 1, 2, 3, 4]
    assert curve_group("val/nar/codebook_2/loss") == curve_group("train/ar/loss") == "loss"
    assert curve_group("val/mel_distance_q4") == "mel_distance"
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "run" / "nothing-here")


# -- the recipe end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three eSpeak voices with a few utterances each, and their speakers.json."""
    root = tmp_path_factory.mktemp("corpus")
    utterances = build_synthetic_corpus(root, hours=0.008, num_speakers=3, sample_rate=16000, workers=1,
                                        use_flite=False)
    write_manifest(root / "test.jsonl", utterances)
    return root


def test_evaluate_end_to_end(tiny_model_dir, corpus, tmp_path):
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("resemblyzer")
    run = tmp_path / "lm-run"
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(run / "logs" / "lm-both") as writer:
        for step in range(3):
            writer.add_scalar("train/ar/loss", 3.0 / (step + 1), step)
    out = evaluate.main(["--model", str(tiny_model_dir), "--manifest", str(corpus / "test.jsonl"), "--max-items", "2",
                         "--out", str(tmp_path / "eval"), "--examples", "1", "--references", "2", "--lm-run", str(run)])
    report = json.loads((out / "report.json").read_text())
    assert report["meters"] == {"asr": "pocketsphinx", "speaker": "resemblyzer"}
    assert len(report["items"]) == 2 and len({i["speaker"] for i in report["items"]}) == 2
    systems = [GROUND_TRUTH, CODEC, CODEC_1, NAR_ON_RECORDING, "synthesis_with_text", "synthesis_without_text"]
    for item in report["items"]:
        assert set(item["renderings"]) == set(systems), item["errors"]
        assert item["prompt_id"] != item["id"]
        for system in systems:
            heard = item["renderings"][system]
            assert isinstance(heard["transcript"], str) and heard["words"] > 0
            assert -1.0 <= heard["sim_own"] <= 1.0 and -1.0 <= heard["sim_others"] <= 1.0
        for name in item["wavs"].values():
            assert (out / "wavs" / name).is_file()
    assert set(report["summary"]) == {"espeak", "all"}  # families from speakers.json
    truth = report["summary"]["all"][GROUND_TRUTH]
    assert truth["items"] == 2 and 0.0 <= truth["wer"] and truth["sim_own"] > truth["sim_others"]  # real voices
    assert set(report["targets"]) == {"synthesis_with_text", "synthesis_without_text"}
    for system, verdict in report["targets"].items():  # what recipes/quickstart.py reads
        assert {"wer_ratio", "sim_own", "separation"} <= set(verdict)
        assert verdict["wer_family"] == "all"  # no flite voice to judge WER on
        assert verdict["wer_ratio"] == report["summary"]["all"][system]["wer_ratio"]
        assert verdict["wer_ratio_target"] == RELEASE_TARGETS.wer_ratio
    assert report["codec_target"]["wer_ratio_target"] == RELEASE_TARGETS.codec_wer_ratio
    assert report["settings"]["targets"]["name"] == "release"
    assert report["codec"]["summaries"][0]["pesq"] is None or report["codec"]["summaries"][0]["pesq"] > 0
    figures = report["figures"]
    assert len(figures["spectrograms"]) == 1 and figures["attention"] == ["plots/attention.png"]
    assert figures["curves"] == ["plots/curves/lm_loss.png"]
    assert all((out / p).is_file() for paths in figures.values() for p in paths)
    for system in ("synthesis_with_text", "synthesis_without_text"):  # a plain AR: no pointer to measure against
        attention = report["attention"][system]
        assert set(attention) == {"focus_rate", "monotonicity"} and 0 < attention["focus_rate"] <= 1
    markdown = (out / "report.md").read_text()
    assert "| espeak | ground truth | 2 |" in markdown and "WER ÷ GT" in markdown and "PESQ" in markdown
    for text in (markdown, json.dumps(report)):  # reports speak of the model, not of the project's tracker
        assert not re.search(r"\bissues?\s*#?\d|learns to read", text, re.IGNORECASE)


def test_synthesis_attention_follows_the_pointer_of_a_windowed_ar(tmp_path, corpus, one_thread):
    """A duration-guided AR whose frames see only the token they speak (text_window 0) attends to
    exactly the pointer's token while it writes: the instrument must say so, with and without a transcript."""
    model_dir = build_tiny_model(tmp_path)
    config = json.loads((model_dir / "ar" / "config.json").read_text())
    ARModel(ARConfig.from_dict({**config, "duration_guided": True, "text_window": 0})).save_pretrained(model_dir / "ar")
    tts = TTS.from_pretrained(model_dir)
    prompt = read_manifest(corpus / "test.jsonl")[0]
    for prompt_text in (prompt.text, None):
        synthesis = tts.generate("The children found a tiny kite.", prompt.audio_path, prompt_text=prompt_text,
                                 seed=0)
        assert synthesis_attention(tts, synthesis) == {"focus_rate": 1.0, "monotonicity": 1.0, "alignment_error": 0.0}


def test_evaluate_without_a_meter_still_reports(tiny_model_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)
    out = evaluate.main(["--model", str(tiny_model_dir), "--manifest", str(corpus / "test.jsonl"), "--max-items", "1",
                         "--out", str(tmp_path / "eval"), "--examples", "0", "--prompt-text", "with",
                         "--speaker", "none", "--targets", "quickstart"])
    report = json.loads((out / "report.json").read_text())
    assert report["meters"]["asr"].startswith("unavailable: pocketsphinx is not installed")
    assert report["meters"]["speaker"] == "unavailable: not asked for (--speaker none)"
    rendering = report["items"][0]["renderings"]["synthesis_with_text"]
    assert rendering["transcript"] is None and rendering["sim_own"] is None
    assert report["summary"]["espeak"]["synthesis_with_text"]["wer"] is None
    assert report["targets"]["synthesis_with_text"]["wer_ratio_target"] == QUICKSTART_TARGETS.wer_ratio == 2.5
    markdown = (out / "report.md").read_text()
    assert "n/a" in markdown and f"Targets for {QUICKSTART_TARGETS.label};" in markdown


def test_evaluate_the_codec_alone_synthesizes_nothing(tiny_model_dir, corpus, tmp_path):
    """--prompt-text none: the ground truth, the codec's resynthesis and the NAR on the recording, judged
    against the codec's targets, and no synthesis."""
    out = evaluate.main(["--model", str(tiny_model_dir), "--manifest", str(corpus / "test.jsonl"), "--max-items", "2",
                         "--out", str(tmp_path / "eval"), "--examples", "1", "--prompt-text", "none",
                         "--asr", "none", "--speaker", "none"])
    report = json.loads((out / "report.json").read_text())
    for item in report["items"]:
        assert set(item["renderings"]) == {GROUND_TRUTH, CODEC, CODEC_1, NAR_ON_RECORDING}, item["errors"]
        assert not item["wavs"] and not item["attention"]
    assert report["targets"] == {} and report["codec_target"]["wer_ratio_target"] == RELEASE_TARGETS.codec_wer_ratio
    assert report["settings"]["prompt_modes"] == [] and report["synthesis_rtf"] is None
    assert report["figures"]["attention"] == [] and len(report["figures"]["spectrograms"]) == 1
    assert not list((out / "wavs").glob("*.wav"))
    assert "| espeak | codec resynthesis | 2 |" in (out / "report.md").read_text()


def test_word_error_change_is_paired_over_shared_items(capsys):
    from app.evaluation import word_error_change

    before = {f"u{i}": {"synthesis_with_text": {"word_errors": 4}, CODEC: {"word_errors": 2}} for i in range(10)}
    after = {f"u{i}": {"synthesis_with_text": {"word_errors": 3}, CODEC: {"word_errors": 2}} for i in range(10)}
    after["extra"] = {"synthesis_with_text": {"word_errors": 50}}  # not in `before`: not compared
    change, low, high, items = word_error_change(before, after, "synthesis_with_text")
    assert items == 10 and change == pytest.approx(-0.25) and low == pytest.approx(-0.25) and high == pytest.approx(-0.25)
    assert word_error_change(before, after, CODEC)[:3] == (0.0, 0.0, 0.0)
    assert word_error_change(before, after, "synthesis_without_text") is None  # never rendered
    after["u0"]["synthesis_with_text"]["word_errors"] = 12  # one sentence got much worse
    change, low, high, _ = word_error_change(before, after, "synthesis_with_text")
    assert change == pytest.approx(39 / 40 - 1)
    assert low < change < high
    for side, errors in ((before, 6), (after, 2)):  # both modes of each item, pooled
        for i in range(10):
            side[f"u{i}"]["synthesis_without_text"] = {"word_errors": errors}
    change, _, _, items = word_error_change(before, after, ["synthesis_with_text", "synthesis_without_text"])
    assert items == 10 and change == pytest.approx((39 + 20) / (40 + 60) - 1)


def test_similarity_change_is_the_mean_paired_difference():
    from app.evaluation import similarity_change

    before = {f"u{i}": {"synthesis_with_text": {"sim_own": 0.70}, "synthesis_without_text": {"sim_own": 0.60},
                        CODEC: {"sim_own": None}} for i in range(8)}
    after = {f"u{i}": {"synthesis_with_text": {"sim_own": 0.75}, "synthesis_without_text": {"sim_own": 0.70},
                       CODEC: {"sim_own": 0.9}} for i in range(8)}
    after["extra"] = {"synthesis_with_text": {"sim_own": 0.1}}  # not in `before`: not compared
    change, low, high, items = similarity_change(before, after, "synthesis_with_text")
    assert items == 8 and change == pytest.approx(0.05) and low == pytest.approx(0.05) and high == pytest.approx(0.05)
    assert similarity_change(before, after, CODEC) is None  # never scored before
    change, _, _, _ = similarity_change(before, after, ["synthesis_with_text", "synthesis_without_text"])
    assert change == pytest.approx(0.075)
    after["u0"]["synthesis_with_text"]["sim_own"] = 0.30  # one voice got much worse
    change, low, high, _ = similarity_change(before, after, "synthesis_with_text")
    assert change == pytest.approx((7 * 0.05 - 0.40) / 8)
    assert low < change < high


def test_compare_evaluations_recipe(tmp_path, capsys):
    from recipes import compare_evaluations

    def report(errors):
        return {"items": [{"id": f"u{i}", "renderings": {GROUND_TRUTH: {"word_errors": 2},
                                                         "synthesis_with_text": {"word_errors": e}}}
                          for i, e in enumerate(errors)]}

    (tmp_path / "a.json").write_text(json.dumps(report([4, 4, 4, 4])))
    (tmp_path / "b.json").write_text(json.dumps(report([2, 2, 2, 2])))
    lines = compare_evaluations.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert "| synthesis, with prompt text | 4 | -50.0% | [-50.0%, -50.0%] |" in lines
    assert not any("similarity" in line for line in lines)  # no report scored a voice
    assert "| ground truth | 4 | +0.0% |" in "\n".join(lines)
    assert not any("pooled" in line for line in lines)  # one prompt mode only
    both = {"items": [{"id": f"u{i}", "renderings": {"synthesis_with_text": {"word_errors": 4},
                                                     "synthesis_without_text": {"word_errors": 6}}} for i in range(2)]}
    (tmp_path / "c.json").write_text(json.dumps(both))
    lines = compare_evaluations.main([str(tmp_path / "c.json"), str(tmp_path / "c.json")])
    assert lines[-1] == "| syntheses, both prompt modes pooled | 2 x 2 | +0.0% | [+0.0%, +0.0%] |"
    for side, similarity in (("d", 0.70), ("e", 0.80)):
        for item in both["items"]:
            for rendering in item["renderings"].values():
                rendering["sim_own"] = similarity
        (tmp_path / f"{side}.json").write_text(json.dumps(both))
    lines = compare_evaluations.main([str(tmp_path / "d.json"), str(tmp_path / "e.json")])
    assert "| synthesis, with prompt text | 2 | +0.100 | [+0.100, +0.100] |" in lines
    assert lines[-1] == "| syntheses, both prompt modes pooled | 2 x 2 | +0.100 | [+0.100, +0.100] |"
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a report.json"):
        compare_evaluations.main([str(tmp_path / "a.json"), str(tmp_path / "c.json")])


def test_wer_ratio_interval_is_paired_with_the_ground_truth():
    def item(i, truth, synthesis):
        result = ItemResult(f"u{i}", "s", "flite", "text", "p", "text", 3.0, 0)
        result.renderings = {GROUND_TRUTH: Rendering(1.0, word_errors=truth, words=10),
                             "synthesis_with_text": Rendering(1.0, word_errors=synthesis, words=10)}
        return result

    same_ratio = [item(i, e, 2 * e) for i, e in enumerate([1, 2, 3, 4, 5])]  # every sentence: twice the errors
    assert wer_ratio_interval(same_ratio, "synthesis_with_text") == pytest.approx((2.0, 2.0))
    mixed = [item(i, 2, e) for i, e in enumerate([1, 2, 3, 4, 5, 6])]
    low, high = wer_ratio_interval(mixed, "synthesis_with_text")
    assert low < 21 / 12 < high
    assert wer_ratio_interval(mixed[:1], "synthesis_with_text") is None
    assert wer_ratio_interval(mixed, "synthesis_without_text") is None


def _record(i: int, family: str, errors: dict[str, int], sim_own: float | None = None) -> ItemResult:
    """An item's record with each system's word errors (10 words) and the same similarities for all."""
    result = ItemResult(f"u{i}", f"s{i % 3}", family, "text", "p", "text", 3.0, 0)
    result.renderings = {system: Rendering(1.0, word_errors=e, words=10, char_errors=e, chars=40, sim_own=sim_own,
                                           sim_others=None if sim_own is None else sim_own - 0.2)
                         for system, e in errors.items()}
    return result


def test_the_summary_gives_each_group_its_ratios_to_the_ground_truth():
    synthesis = "synthesis_with_text"
    results = [_record(i, "flite", {GROUND_TRUTH: 2, CODEC: 3, synthesis: 3 + i}) for i in range(4)] + \
              [_record(i, "espeak", {GROUND_TRUTH: 5, synthesis: 9}) for i in range(4, 7)] + \
              [_record(7, "espeak", {GROUND_TRUTH: 5})]  # this item's synthesis failed
    summary = summarize_items(results, [GROUND_TRUTH, CODEC, synthesis])
    assert list(summary) == ["espeak", "flite", ALL] and list(summary["espeak"]) == [GROUND_TRUTH, synthesis]
    for group, members in (("flite", results[:4]), ("espeak", results[4:]), (ALL, results)):
        truth = summary[group][GROUND_TRUTH]
        assert truth.wer_ratio is None and truth.wer_ratio_interval is None
        row = summary[group][synthesis]
        assert row == replace(summarize([r.renderings[synthesis] for r in members if synthesis in r.renderings]),
                              wer_ratio=row.wer / truth.wer, wer_ratio_interval=wer_ratio_interval(members, synthesis))
    assert summary["flite"][synthesis].wer_ratio == pytest.approx(18 / 8)
    assert summary["espeak"][synthesis].wer_ratio == pytest.approx((27 / 30) / (20 / 40))  # over its own items
    assert summary["espeak"][synthesis].wer_ratio_interval is not None
    assert summary[ALL][CODEC].items == 4
    unknown = summarize_items([_record(i, "unknown", {GROUND_TRUTH: 0, synthesis: 1}) for i in range(2)],
                              [GROUND_TRUTH, synthesis])
    assert list(unknown) == [ALL] and unknown[ALL][synthesis].wer_ratio is None  # no ratio to a perfect reference


def test_the_targets_are_one_object_that_judges_the_summary():
    assert (RELEASE_TARGETS.wer_ratio, RELEASE_TARGETS.sim_own) == (1.5, 0.75)
    assert (RELEASE_TARGETS.codec_wer_ratio, RELEASE_TARGETS.codec_sim_own) == (1.2, 0.85)
    assert QUICKSTART_TARGETS == replace(RELEASE_TARGETS, name="quickstart", label=QUICKSTART_TARGETS.label,
                                         wer_ratio=2.5)
    assert TARGETS == {"release": RELEASE_TARGETS, "quickstart": QUICKSTART_TARGETS}
    with pytest.raises(ValueError, match="Targets.wer_ratio is a ratio"):
        replace(RELEASE_TARGETS, wer_ratio=0)
    with pytest.raises(ValueError, match="Targets.codec_sim_own is a cosine similarity"):
        replace(RELEASE_TARGETS, codec_sim_own=1.5)

    synthesis = "synthesis_with_text"
    results = [_record(i, "flite", {GROUND_TRUTH: 4, CODEC: 5, synthesis: 8}, sim_own=0.8) for i in range(3)] + \
              [_record(i, "espeak", {GROUND_TRUTH: 8, CODEC: 8, synthesis: 8}, sim_own=0.8) for i in range(3, 6)]
    summary = summarize_items(results, [GROUND_TRUTH, CODEC, synthesis])
    verdicts = RELEASE_TARGETS.check(summary)
    assert list(verdicts) == [synthesis, CODEC]
    assert verdicts[synthesis]["wer_family"] == "flite" and verdicts[synthesis]["wer_ratio"] == pytest.approx(2.0)
    assert verdicts[synthesis]["wer_ratio_met"] is False and verdicts[synthesis]["sim_own_met"] is True
    assert verdicts[synthesis]["wer_ratio_interval"] == summary["flite"][synthesis].wer_ratio_interval
    assert verdicts[synthesis]["separation"] == pytest.approx(0.2)
    assert verdicts[CODEC]["wer_ratio"] == pytest.approx(1.25) and verdicts[CODEC]["wer_ratio_met"] is False
    assert verdicts[CODEC]["sim_own_target"] == 0.85 and verdicts[CODEC]["sim_own_met"] is False
    assert QUICKSTART_TARGETS.check(summary)[synthesis]["wer_ratio_met"] is True  # 2.0 <= 2.5
    assert replace(RELEASE_TARGETS, codec_wer_ratio=1.3).check(summary)[CODEC]["wer_ratio_met"] is True
    espeak_only = summarize_items(results[3:], [GROUND_TRUTH, synthesis])
    fallback = RELEASE_TARGETS.check(espeak_only)[synthesis]  # no flite voice: WER judged on all voices
    assert fallback["wer_family"] == ALL and fallback["wer_ratio"] == pytest.approx(1.0)
    assert fallback["wer_ratio_met"] is True and CODEC not in RELEASE_TARGETS.check(espeak_only)


def test_the_report_prints_the_summary_and_the_targets():
    synthesis = "synthesis_with_text"
    results = [_record(i, "flite", {GROUND_TRUTH: 4, CODEC: 5, synthesis: 4 + i}, sim_own=0.8) for i in range(4)]
    summary = summarize_items(results, [GROUND_TRUTH, CODEC, synthesis])
    report = TTSReport(meters={"asr": "fake", "speaker": "fake"}, settings={}, items=results, summary=summary,
                       codec=None, synthesis_rtf=None, targets=QUICKSTART_TARGETS)
    markdown = report.to_markdown()
    low, high = summary["flite"][synthesis].wer_ratio_interval
    assert f"| flite | synthesis, with prompt text | 4 | 55.0 % | 13.8 % | 1.38 [{low:.2f}–{high:.2f}] |" in markdown
    assert "| flite | ground truth | 4 | 40.0 % | 10.0 % | – |" in markdown
    assert "| all |" not in markdown  # one family: its rows are all the rows
    assert "synthesis, with prompt text: WER ÷ GT 1.38 (≤ 2.5: met); similarity to own voice 0.80 (≥ 0.75: met)" \
           in markdown
    assert "codec resynthesis: WER ÷ GT 1.25 (≤ 1.2: not met); similarity to own voice 0.80 (≥ 0.85: not met)" \
           in markdown
    data = report.to_dict()
    assert list(data["targets"]) == [synthesis] and data["codec_target"]["wer_ratio"] == pytest.approx(1.25)
    assert data["summary"]["flite"][synthesis]["wer_ratio_interval"] == [low, high]
    assert [item["id"] for item in data["items"]] == ["u0", "u1", "u2", "u3"]


class _FixedASR:
    """Hears every rendering as the same words, and counts what it was given."""

    name = "fixed"

    def __init__(self) -> None:
        self.heard: list[float] = []

    def transcribe(self, wav, sample_rate: int) -> str:
        self.heard.append(len(wav) / sample_rate)
        return "the kite"


def test_one_item_is_rendered_in_every_system_and_heard(tiny_model_dir, corpus, tmp_path):
    tts = TTS.from_pretrained(tiny_model_dir)
    item = choose_items(read_manifest(corpus / "test.jsonl"), max_items=1, seed=0)[0]
    synthesis = tts.generate(item.target.text, item.prompt.audio_path, prompt_text=item.prompt.text, seed=item.seed)
    resynthesis = torch.zeros(tts.sample_rate // 2)  # [T]: half a second of silence stands in for the codec's
    asr = _FixedASR()
    evaluation = evaluate_item(tts, item, {"synthesis_with_text": synthesis, "synthesis_without_text": "refused"},
                               {CODEC: resynthesis}, Meters(asr, None), "with", tmp_path)
    result = evaluation.result
    assert list(result.renderings) == [GROUND_TRUTH, CODEC, NAR_ON_RECORDING, "synthesis_with_text"]
    assert result.errors == {"synthesis_without_text": "refused"}
    assert result.wavs == {"synthesis_with_text": f"{item.target.id}.synthesis_with_text.wav"}
    assert (tmp_path / result.wavs["synthesis_with_text"]).is_file()
    assert set(result.attention) == {"synthesis_with_text"}
    expected = word_errors(item.target.text, "the kite", item.target.language)
    for rendering in result.renderings.values():
        assert (rendering.word_errors, rendering.words) == (expected.errors, expected.length)
        assert rendering.transcript == "the kite" and rendering.sim_own is None
    durations = [r.duration for r in result.renderings.values()]
    assert durations == pytest.approx(asr.heard)  # each rendering heard once, whole
    assert durations[0] == pytest.approx(item.target.duration, abs=0.01) and durations[1] == 0.5
    assert result.renderings["synthesis_with_text"].duration == pytest.approx(synthesis.duration)
    assert list(evaluation.waves) == ["prompt", *result.renderings]

    unreadable = replace(item, target=replace(item.target, audio_path=str(tmp_path / "missing.wav")))
    evaluation = evaluate_item(tts, unreadable, {"synthesis_with_text": synthesis}, {}, Meters(asr, None))
    assert list(evaluation.result.errors) == [GROUND_TRUTH] and "missing.wav" in evaluation.result.errors[GROUND_TRUTH]
    assert evaluation.result.renderings == {} and evaluation.waves == {}


def test_evaluation_keeps_the_candidate_the_scorers_choose(tiny_model_dir, corpus):
    """best_of/scorers reach every item's synthesis, and candidate 0 is the best-of-1 synthesis (paired reports)."""
    tts = TTS.from_pretrained(tiny_model_dir)
    items = choose_items(read_manifest(corpus / "test.jsonl"), max_items=2, seed=0)
    longest = Scorer("longest", lambda candidates: [float(c.n_frames) for c in candidates])
    alone, _ = _synthesize_items(tts, items, ["without"], DEFAULT_SAMPLING, batch_size=2)
    chosen, _ = _synthesize_items(tts, items, ["without"], DEFAULT_SAMPLING, batch_size=2, best_of=3,
                                  scorers=[longest])
    assert len(chosen) == len(items) and all(list(made) == ["synthesis_without_text"] for made in chosen)
    for made, made_alone in zip(chosen, alone):
        segment = made["synthesis_without_text"].segments[0]
        frames = [c.n_frames for c in segment.candidates]
        assert len(frames) == 3 and segment.best == frames.index(max(frames))
        assert torch.equal(segment.candidates[0].codes1, made_alone["synthesis_without_text"].segments[0].chosen.codes1)


def test_evaluate_refuses_bad_best_of_and_rerank(tiny_model_dir, corpus, capsys):
    for bad, message in ((["--best-of", "0"], "--best-of must be at least 1"),
                         (["--rerank", "asr,loudness"], "rerank with one or more of logprob, asr, speaker"),
                         (["--prompt-text", "none", "--best-of", "4"], "--prompt-text none makes none")):
        with pytest.raises(SystemExit):
            evaluate.main(["--model", str(tiny_model_dir), "--manifest", str(corpus / "test.jsonl"), *bad])
        assert message in capsys.readouterr().err


# -- where a duration-guided AR loses the words (recipes/diagnose_ar.py) ------------------------------


def _guided_model(tmp_path: Path, **changes) -> Path:
    model_dir = build_tiny_model(tmp_path)
    config = json.loads((model_dir / "ar" / "config.json").read_text())
    ARModel(ARConfig.from_dict({**config, "duration_guided": True, "text_window": 1, **changes})).save_pretrained(
        model_dir / "ar")
    return model_dir


def test_on_timing_with_the_recordings_codes_fed_back_is_teacher_forcing(tmp_path):
    ar = TTS.from_pretrained(_guided_model(tmp_path)).ar
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, ar.config.text_vocab_size, (7,), generator=g)
    prompt = torch.randint(0, 16, (3, 5), generator=g)
    codes = torch.randint(0, 16, (3, 12), generator=g)
    alignment = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6])
    one = lambda n: torch.tensor([n])  # noqa: E731
    forced = ar(text[None], one(7), prompt[None], one(5), codes[None], one(12), alignment=alignment[None]).logits[0, :12]
    written, logits = diagnose_ar.on_timing(ar, text, prompt, alignment, lambda frame, before: codes[0, len(before)])
    assert torch.equal(written, codes[0]) and torch.allclose(logits, forced, atol=1e-5)
    variants = diagnose_ar.codebook1_variants(ar, text, prompt, codes, alignment, DEFAULT_SAMPLING, g)
    assert torch.equal(variants.recording, codes[0])
    assert torch.equal(variants.teacher_forced_top1, forced[:, :16].argmax(-1))
    assert all(v.shape == (12,) and 0 <= v.min() and v.max() < 16 for v in
               (variants.teacher_forced, variants.recording_timing))


def test_the_diagnosis_guides_the_ar_as_synthesis_does(tmp_path):
    ar = TTS.from_pretrained(_guided_model(tmp_path, text_dropout=0.1)).ar
    g = torch.Generator().manual_seed(1)
    text = torch.randint(3, ar.config.text_vocab_size, (6,), generator=g)
    prompt, codes = torch.randint(0, 16, (3, 4), generator=g), torch.randint(0, 16, (3, 9), generator=g)
    alignment = torch.tensor([0, 1, 1, 2, 3, 3, 4, 5, 5])
    one = lambda n: torch.tensor([n])  # noqa: E731
    forced = [ar(t[None], one(6), prompt[None], one(4), codes[None], one(9), alignment=alignment[None]).logits[0, :9]
              for t in (text, ar.hide_text(text))]
    guided = guide(*forced, DEFAULT_CFG_SCALE)
    _, logits = diagnose_ar.on_timing(ar, text, prompt, alignment, lambda frame, before: codes[0, len(before)],
                                      DEFAULT_CFG_SCALE)
    assert torch.allclose(logits, guided, atol=1e-4)
    variants = diagnose_ar.codebook1_variants(ar, text, prompt, codes, alignment, DEFAULT_SAMPLING, g)
    assert torch.equal(variants.teacher_forced_top1, guided[:, :16].argmax(-1))


def test_diagnose_ar_end_to_end(tmp_path, corpus, capsys):
    pytest.importorskip("pocketsphinx")
    model_dir = _guided_model(tmp_path)
    tts = TTS.from_pretrained(model_dir)
    aligner = Aligner(AlignerConfig(text_vocab_size=tts.ar.config.text_vocab_size, text_pad_id=tts.ar.config.text_pad_id,
                                    codebook_size=16, n_q=3, codec=tts.ar.config.codec,
                                    text_vocab=tts.ar.config.text_vocab, d_model=16, n_layers=1, align_dim=8))
    aligner.save_pretrained(tmp_path / "aligner")
    out = tmp_path / "diagnosis.json"
    figures = diagnose_ar.main(["--model", str(model_dir), "--aligner", str(tmp_path / "aligner"), "--manifest",
                                str(corpus / "test.jsonl"), "--max-items", "2", "--out", str(out)])
    assert set(figures) == {GROUND_TRUTH, *diagnose_ar.SYSTEMS}
    assert json.loads(out.read_text())["items"] == 2
    assert all(f["wer"] >= 0 and (f["ratio"] is None or f["ratio"] >= 0) for f in figures.values())
    assert "| teacher-forced, sampled |" in capsys.readouterr().out
    (tmp_path / "bare").mkdir()
    write_manifest(tmp_path / "bare" / "test.jsonl", read_manifest(corpus / "test.jsonl"))  # no speakers.json
    with pytest.raises(SystemExit, match="speakers.json"):
        diagnose_ar.main(["--model", str(model_dir), "--aligner", str(tmp_path / "aligner"), "--manifest",
                          str(tmp_path / "bare" / "test.jsonl"), "--families", "flite"])
    build_tiny_model(tmp_path / "plain")  # a plain VALL-E AR has no pointer to put on a timing
    with pytest.raises(SystemExit, match="not a duration-guided AR"):
        diagnose_ar.main(["--model", str(tmp_path / "plain" / "model"), "--aligner", str(tmp_path / "aligner"),
                          "--manifest", str(corpus / "test.jsonl")])
