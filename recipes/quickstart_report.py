"""The quickstart's report, RUN/report.md: what every stage took and what it measured, as tables.

The figures are in the report itself, read from what the stages left: the stages' records
(RUN/quickstart.json), corpus/summary.json, samples/samples.json, the evaluation's
report/report.json and curve/learning_curve.json. Links only lead to what a table cannot hold
(the wavs, the plots, the evaluation's own files). A section whose data is missing is left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes.stages import format_seconds, now

if TYPE_CHECKING:
    from recipes.quickstart import Paths


def write_report(paths: Paths, state: dict[str, Any], homes: dict[str, Path]) -> None:
    """Write RUN/report.md. homes: each stage (but the report) -> its main output, in the order they run."""
    lines = (_header(paths, state) + _stages(paths, state, homes) + _corpus(paths) + _language_models(state)
             + _aligner(paths, state) + _samples(paths) + _evaluation(paths, state) + _learning_curve(paths)
             + _usage(paths))
    paths.report.write_text("\n".join(lines))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    """A markdown table. align: "l" or "r" per column; by default the first column left, the others right."""
    def cells(row: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |"

    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} must have a letter for each of the {len(header)} columns")
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return [cells(header), rule, *map(cells, rows), ""]


def number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _header(paths: Paths, state: dict[str, Any]) -> list[str]:
    return ["# Echo quickstart report", "",
            (f"Preset `{state['preset']}`, run directory `{paths.root}`, written {now()} by "
             f"`{state['last_run']['command']}`."), "",
            f"The model: `{paths.model}`.", ""]


def _stages(paths: Paths, state: dict[str, Any], homes: dict[str, Path]) -> list[str]:
    records, ran = state["stages"], state["last_run"]["ran"]
    rows = []
    for name, home in homes.items():
        record = records.get(name, {})
        status = record.get("status", "not run")
        if status in ("failed", "interrupted", "skipped"):  # "skipped": a record from an older quickstart
            status = f"{status}: {record.get('error') or record.get('reason', '')}"
        elif status == "completed" and name not in ran:
            status = "completed in an earlier run"
        seconds = format_seconds(record["seconds"]) if "seconds" in record else ""
        output = home.relative_to(paths.root).as_posix() + ("/" if not home.suffix else "")
        rows.append([name, status, seconds, f"`{output}`"])
    total = sum(r.get("seconds", 0.0) for r in records.values() if r.get("status") == "completed")
    return (["## Stages", ""] + table(["stage", "status", "wall time", "output"], rows, "llrl")
            + [f"Total wall time of the completed stages: **{format_seconds(total)}**.", ""])


def _corpus(paths: Paths) -> list[str]:
    summary = paths.corpus / "summary.json"
    if not summary.is_file():
        return []
    rows = [[split, f"{s['hours']:.3f}", s["speakers"], s["utterances"]]
            for split, s in json.loads(summary.read_text()).items()]
    return ["## Corpus", ""] + table(["split", "hours", "speakers", "utterances"], rows)


def _language_models(state: dict[str, Any]) -> list[str]:
    validation = state["stages"].get("lm", {}).get("validation", {})
    if not validation:
        return []
    rows = [[stage, result.get("step", ""), key.removesuffix("/top1"), number(value, 3),
             number(result.get(key.removesuffix("/top1") + "/top10"), 3)]
            for stage, result in validation.items() for key, value in result.items() if key.endswith("/top1")]
    lines = ["## Language models on the dev set (last validation)", ""]
    lines += table(["run", "step", "model and codebook", "top-1", "top-10"], rows, "lrlrr")
    reading = [[key.removeprefix("ar/"), number(value, 3)] for result in validation.values()
               for key, value in result.items() if key == "ar/reading_gap" or key.startswith("ar/attention/")]
    if reading:
        lines += ["### Does the AR read the dev set?", "",
                  ("`reading_gap`: top-1 with the real text minus top-1 with each item's text shuffled; "
                   "`attention/…`: its attention onto the text in its most focused layer."), ""]
        lines += table(["measure", "value"], reading)
    pitch = [[key.removeprefix("nar/pitch/"), number(value, 3)] for result in validation.values()
             for key, value in result.items() if key.startswith("nar/pitch/")]
    if pitch:
        lines += ["### Does the NAR say the pitch?", "",
                  ("The codec's pitch stream as the NAR predicts it from the recording's codebook 1: `voicing`, "
                   "the share of frames it calls voiced or unvoiced rightly; `within_semitone`, of the frames "
                   "both call voiced, the share within a semitone of the recording's F0."), ""]
        lines += table(["measure", "value"], pitch)
    return lines


def _aligner(paths: Paths, state: dict[str, Any]) -> list[str]:
    record = state["stages"].get("align", {})
    if record.get("status") != "completed":
        return []
    rows = [[key, number(value, 3)] for key, value in record.items()
            if key != "seconds" and isinstance(value, (int, float)) and not isinstance(value, bool)]
    if not rows:
        return []
    plot = (paths.aligner / "alignment.png").relative_to(paths.root).as_posix()
    return (["## The aligner", "", f"What recipes/align.py measured on the corpus (its soft alignment: `{plot}`).", ""]
            + table(["measure", "value"], rows))


def _samples(paths: Paths) -> list[str]:
    samples = paths.samples / "samples.json"
    if not samples.is_file():
        return []
    rows = [[r["speaker"], r["text"], f"[prompt](samples/{r['prompt']})",
             *(_sample_cell(r, key) for key in ("reference", "cloned", "cloned_with_prompt_text"))]
            for r in json.loads(samples.read_text())]
    return (["## Samples: held-out sentences in held-out voices", "",
             ("Each voice is cloned from the `prompt`, one utterance of a speaker never trained on; `reference` is "
              "that speaker reading the sentence itself. Each link is the length of its audio; RTF: seconds of "
              "synthesis per second of speech."), ""]
            + table(["speaker", "text", "prompt", "reference", "cloned", "cloned, given the prompt's text"], rows,
                    "llllll"))


def _sample_cell(record: dict[str, Any], key: str) -> str:
    if key not in record:
        return "failed"
    seconds = record.get(f"{key}_seconds")
    cell = f"[{record[key] if seconds is None else f'{seconds:.2f} s'}](samples/{record[key]})"
    if f"{key}_real_time_factor" in record:
        cell += f", RTF {record[f'{key}_real_time_factor']:.2f}"
    if record.get(f"{key}_ended_by_model") is False:
        cell += ", cut at the length limit"  # the AR never wrote its end of speech
    return cell


def _evaluation(paths: Paths, state: dict[str, Any]) -> list[str]:
    lines = ["## Evaluation", ""]
    record = state["stages"].get("evaluate", {})
    if record.get("status") != "completed":
        why = record.get("error") or record.get("reason") or record.get("status", "not reached")
        return lines + [f"Not run: {why}.", ""]
    found = paths.evaluation / "report.json"
    if not found.is_file():
        return lines + [f"The evaluation left no `{found.relative_to(paths.root)}`.", ""]
    report = json.loads(found.read_text())
    if "command" in report:
        lines += [f"`{report['command']}`", ""]
    meters = report.get("meters", {})
    lines += [(f"ASR: {meters.get('asr', '–')}; speaker encoder: {meters.get('speaker', '–')}. WER ÷ GT: a "
               "rendering's WER over the ground truth's (the same sentences in the same voices), with its 90 % "
               "bootstrap interval where the evaluation gives one. Similarities are cosines to the speaker's own "
               "voice (their other recordings), to the prompt, and to the other held-out voices."), ""]
    lines += _systems(report.get("summary", {})) + _targets(report.get("targets", {}))
    lines += _attention(report.get("attention") or {}, report.get("synthesis_rtf"))
    lines += _codec(report.get("codec"))
    lines += _evaluation_files(paths)
    return lines


def _wer_ratio(row: dict[str, Any], truth: dict[str, Any] | None = None) -> str:
    """A system's WER ÷ the ground truth's, with its interval when the report has one; an older report.json
    has no ratio in its summary, which the ground truth's WER (`truth`) then gives."""
    ratio = row.get("wer_ratio")
    if ratio is None and truth and truth.get("wer") and row.get("wer") is not None and row is not truth:
        ratio = row["wer"] / truth["wer"]
    interval = row.get("wer_ratio_interval")
    return number(ratio) + (f" [{interval[0]:.2f}–{interval[1]:.2f}]" if ratio is not None and interval else "")


def _systems(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    from app.evaluation import ALL, GROUND_TRUTH  # here: the quickstart starts without loading the app

    rows = []
    for group, systems in summary.items():
        if group == ALL and len(summary) == 2:  # a single voice family: "all" repeats its rows
            continue
        truth = systems.get(GROUND_TRUTH)
        for system, s in systems.items():
            rows.append([group, f"`{system}`", s.get("items", ""), percent(s.get("wer")), percent(s.get("cer")),
                         _wer_ratio(s, truth), number(s.get("sim_own")), number(s.get("sim_prompt")),
                         number(s.get("sim_others"))])
    if not rows:
        return []
    return (["### Zero-shot synthesis on held-out voices", ""]
            + table(["voices", "system", "items", "WER", "CER", "WER ÷ GT", "sim own voice", "sim prompt",
                     "sim others"], rows, "llrrrrrrr"))


def _targets(targets: dict[str, dict[str, Any]]) -> list[str]:
    def verdict(met: bool | None) -> str:
        return "–" if met is None else ("met" if met else "not met")

    rows = [[f"`{system}`", t.get("wer_family", ""),
             f"{_wer_ratio(t)} (≤ {t['wer_ratio_target']:g}: {verdict(t.get('wer_ratio_met'))})",
             f"{number(t.get('sim_own'))} (≥ {t['sim_own_target']:g}: {verdict(t.get('sim_own_met'))})",
             number(t.get("separation")), number(t.get("ground_truth_separation"))]
            for system, t in targets.items()]
    if not rows:
        return []
    return (["### Against the targets", "",
             "WER on the voices named (those the offline ASR hears), similarity on all voices.", ""]
            + table(["system", "WER judged on", "WER ÷ GT", "similarity to own voice", "own − others",
                     "ground truth's own − others"], rows, "llrrrr"))


def _attention(attention: dict[str, dict[str, float]], rtf: float | None) -> list[str]:
    lines = []
    if attention:
        rows = [[f"`{system}`", number(a.get("focus_rate")), number(a.get("monotonicity")),
                 number(a.get("alignment_error"))] for system, a in attention.items()]
        lines += ["### Does the AR read the held-out sentences?", "",
                  ("Its attention onto the text while it wrote the syntheses, in its most focused layer, mean over "
                   "the items: focus rate (1: one token at a time), monotonicity, and the distance in tokens from "
                   "the token its pointer spoke (a duration-guided AR)."), ""]
        lines += table(["system", "focus rate", "monotonicity", "distance to the pointer"], rows)
    if rtf is not None:
        lines += [f"Synthesis real-time factor: {rtf:.2f} (seconds of compute per second of speech).", ""]
    return lines


def _codec(codec: dict[str, Any] | None) -> list[str]:
    if not codec or not codec.get("summaries"):
        return []
    rows = [[s["n_q"], number(s["bitrate"] / 1000), number(s.get("pesq")), number(s.get("stoi"), 3),
             number(s.get("mel_distance"), 3), number(s.get("si_sdr"), 1)] for s in codec["summaries"]]
    lines = (["### The model's codec on the same recordings", ""]
             + table(["codebooks", "kbps", "PESQ", "STOI", "mel distance", "SI-SDR (dB)"], rows, "rrrrrr"))
    usage = codec.get("usage")
    if usage:
        used, perplexity = usage["fraction_used"], usage["perplexity"]
        lines += table(["codebook", *(str(k + 1) for k in range(len(used)))],
                       [["codes used", *(f"{u:.0%}" for u in used)],
                        [f"perplexity (of {usage['codebook_size']})", *(f"{p:.0f}" for p in perplexity)]])
    return lines


def _evaluation_files(paths: Paths) -> list[str]:
    """The evaluation's own files, a line per folder: its report.md (with every plot), the plots, report.json."""
    files = sorted((f.relative_to(paths.root) for f in paths.evaluation.rglob("*")
                    if f.is_file() and f.suffix in (".png", ".md", ".json")), key=lambda f: (f.parent, f.name))
    if not files:
        return ["(The evaluation wrote no files.)", ""]
    lines = ["### The evaluation's files", ""]
    for folder, members in groupby(files, key=lambda f: f.parent):
        links = ", ".join(f"[{f.name}]({f.as_posix()})" for f in members)
        lines.append(f"- `{folder.as_posix()}/`: {links}")
    return lines + [""]


def _learning_curve(paths: Paths) -> list[str]:
    curve = paths.curve / "learning_curve.json"
    if not curve.is_file():
        return []
    points = json.loads(curve.read_text())
    systems = [key for key in points[0] if key not in ("ar_step", "minutes")] if points else []
    header = ["AR step", "minutes"] + [f"`{s}` {what}" for s in systems for what in ("WER ÷ GT", "similarity")]
    rows = [[point["ar_step"] or "final", point["minutes"],
             *(number(point.get(s, {}).get(key)) for s in systems for key in ("wer_ratio", "sim_own"))]
            for point in points]
    plots = [f"![{f.stem}]({f.relative_to(paths.root).as_posix()})"
             for f in sorted(paths.curve.glob("learning_curve_*.png"))]
    return (["## Learning curve", "",
             ("Each AR snapshot with the final codec and NAR, on the same held-out sentences; minutes of training "
              "of the codec, tokenization, aligner, NAR and the AR up to the snapshot."), ""]
            + table(header, rows) + plots + [""])


def _usage(paths: Paths) -> list[str]:
    return ["## Use the model", "", "```bash",
            f'echo-tts synthesize --model {paths.model} --text "Hello there." --prompt voice.wav --out out.wav',
            "```", "", "```python", "from app import TTS", "",
            f'tts = TTS.from_pretrained("{paths.model}")',
            'wav, sr = tts.synthesize("Hello there.", "voice.wav", prompt_text="What voice.wav says.")',
            "```", ""]
