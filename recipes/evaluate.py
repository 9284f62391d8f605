"""Evaluate a model on held-out voices: intelligibility and speaker similarity against the ground truth.

    python recipes/evaluate.py --model runs/quickstart/model --manifest runs/quickstart/corpus/test.jsonl
    python recipes/evaluate.py --model runs/lm-cpu/model --manifest runs/quickstart/corpus/test.jsonl \\
        --max-items 12 --codec-run runs/codec-cpu --lm-run runs/lm-cpu
    python recipes/evaluate.py ... --asr openai/whisper-base --speaker microsoft/wavlm-base-plus-sv

For every test utterance, another utterance of the same speaker is the voice prompt, and the
sentence is synthesized in that voice, with and/or without the prompt's transcript
(--prompt-text; `none` skips the syntheses, to measure the codec alone on many items). The
syntheses, the ground-truth recordings and their codec resyntheses are all heard by the same
meters (app/meters.py): WER/CER from an ASR model, speaker similarity to the speaker's own
voice, to the prompt and to the other held-out voices. The model's codec
is scored too (PESQ, STOI, SI-SDR, mel distance). The report judges the syntheses and the codec
against the quality targets of a released model, or of the quickstart with --targets quickstart
(app.evaluation.Targets). The meters pocketsphinx and resemblyzer come with
`pip install 'echo-tts[eval]'`; a missing one is reported, not fatal.

--out (default: <model>/eval) receives report.json, report.md, the syntheses in wavs/, and
plots/: spectrograms of prompt, syntheses and ground truth for the first items, the AR
model's attention onto the text for one synthesis, and the training curves of --codec-run
and --lm-run (read from their TensorBoard logs).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from app.evaluation import PROMPT_MODES, TARGETS, choose_items, evaluate_tts, read_voice_families
from app.figures import ar_attention, plot_attention, plot_training_curves, read_scalars
from app.meters import MeterUnavailable, load_asr, load_speaker
from app.scoring import scorer_names, scorers_by_name
from app.tts import DEFAULT_SAMPLING, TTS
from codec.evaluation import write_examples
from data.manifest import read_manifest
from data.plots import plot_spectrograms
from lm.generation import cfg_scale_for

logger = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="exported model directory (codec/ ar/ nar/ text/)")
    parser.add_argument("--manifest", type=Path, required=True,
                        help="manifest of the held-out speakers' utterances (e.g. <corpus>/test.jsonl)")
    parser.add_argument("--speakers", type=Path, default=None,
                        help="speakers.json giving each voice's family (default: next to the manifest, if there)")
    parser.add_argument("--max-items", type=int, default=None,
                        help="evaluate at most this many sentences, spread over the speakers (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <model>/eval)")
    parser.add_argument("--asr", default="pocketsphinx",
                        help="pocketsphinx, a Whisper directory or hub id (openai/whisper-base), or none")
    parser.add_argument("--speaker", default="resemblyzer",
                        help="resemblyzer, an x-vector model directory or hub id (microsoft/wavlm-base-plus-sv), "
                             "or none")
    parser.add_argument("--families", nargs="+", default=None,
                        help="evaluate only voices of these families (e.g. flite, which pocketsphinx reads best); "
                             "all held-out voices still count as 'other voices' for similarity")
    parser.add_argument("--prompt-text", choices=("with", "without", "both", "none"), default="both",
                        help="synthesize with the prompt's transcript, without it, or both ways (default); none: "
                             "synthesize nothing and measure the codec's resynthesis (and the NAR on the "
                             "recording's codebook 1) alone, in about half the time per item")
    parser.add_argument("--targets", choices=sorted(TARGETS), default="release",
                        help="the quality targets the report judges against: "
                             + "; ".join(f"{t.name}, for {t.label}: WER ≤ {t.wer_ratio:g}× the ground truth's, "
                                         f"similarity to own voice ≥ {t.sim_own:g}" for t in TARGETS.values())
                             + " (default: release)")
    parser.add_argument("--codec-run", type=Path, default=None, help="codec training run dir: plot its curves")
    parser.add_argument("--lm-run", type=Path, default=None, help="LM training run dir: plot its curves")
    parser.add_argument("--examples", type=int, default=3, help="items whose spectrograms are plotted (default: 3)")
    parser.add_argument("--references", type=int, default=5,
                        help="recordings averaged into each speaker's voice embedding (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the prompts and seeds the syntheses")
    parser.add_argument("--temperature", type=float, default=DEFAULT_SAMPLING.temperature, help="AR sampling")
    parser.add_argument("--top-k", type=int, default=DEFAULT_SAMPLING.top_k, help="AR sampling (0: all)")
    parser.add_argument("--top-p", type=float, default=DEFAULT_SAMPLING.top_p, help="AR sampling (1: all)")
    parser.add_argument("--repetition-threshold", type=float, default=DEFAULT_SAMPLING.repetition_threshold,
                        help="AR sampling: VALL-E 2's repetition-aware resampling (0: off)")
    parser.add_argument("--cfg-scale", type=float, default=DEFAULT_SAMPLING.cfg_scale,
                        help="AR sampling: classifier-free guidance on the text (1: off; default: the model's own, "
                             "lm/generation.py's cfg_scale_for)")
    parser.add_argument("--best-of", type=int, default=1,
                        help="candidates per sentence, the best kept (default 1; candidate 0 is the best-of-1 synthesis)")
    parser.add_argument("--rerank", default=None,
                        help="what picks the best candidate: logprob (the default), asr, speaker or a combination "
                             "such as asr,speaker (README: Synthesis). The same ASR and speaker models as the "
                             "measurements: a choice by one of them flatters its own figure")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if args.best_of < 1:
        parser.error(f"--best-of must be at least 1, got {args.best_of}")
    if args.rerank is not None:
        try:
            scorer_names(args.rerank)
        except ValueError as error:
            parser.error(f"--rerank: {error}")
    if args.prompt_text == "none" and (args.best_of > 1 or args.rerank is not None):
        parser.error("--best-of and --rerank choose among syntheses, and --prompt-text none makes none: "
                     "drop them, or synthesize with --prompt-text with|without|both")
    if args.max_items is not None and args.max_items < 1:
        parser.error(f"--max-items must be at least 1, got {args.max_items}")
    if args.examples < 0 or args.references < 1:
        parser.error("--examples must be 0 or more and --references at least 1")
    for name in ("codec_run", "lm_run"):
        run = getattr(args, name)
        if run is not None and not run.is_dir():
            parser.error(f"--{name.replace('_', '-')} {run} is not a directory")
    return args


def load_meters(args: argparse.Namespace, language: str, device: str):
    """The ASR and speaker meters asked for; one that cannot run is None, with the reason in `notes`."""
    meters, notes = {}, {}
    for kind, spec, load in (("asr", args.asr, lambda: load_asr(args.asr, language, device)),
                             ("speaker", args.speaker, lambda: load_speaker(args.speaker, device))):
        meters[kind] = None
        if spec == "none":
            notes[kind] = f"not asked for (--{kind} none)"
            continue
        try:
            meters[kind] = load()
        except MeterUnavailable as error:
            notes[kind] = str(error)
            logger.warning("the %s meter is unavailable, its measurements are left out: %s", kind, error)
    return meters["asr"], meters["speaker"], notes


def write_figures(report, tts: TTS, args: argparse.Namespace, out: Path) -> dict[str, list[str]]:
    """Spectrograms, the AR attention map and training curves; returns the files written, by kind."""
    plots = out / "plots"
    figures: dict[str, list[Path]] = {"spectrograms": [], "attention": [], "curves": []}
    for item_id, waves in report.examples.items():
        figures["spectrograms"].append(
            plot_spectrograms(waves, report.sample_rate, plots / "spectrograms" / f"{item_id}.png", title=item_id))
    if report.attention_example is not None:
        item, synthesis = report.attention_example
        weights, tokens, prompt_text_length = ar_attention(tts, synthesis)
        mode = "with" if prompt_text_length else "without"
        spoken = synthesis.segments[0].chosen.alignment
        figures["attention"].append(plot_attention(
            weights, tokens, plots / "attention.png", tts.frame_rate, prompt_text_length=prompt_text_length,
            spoken=None if spoken is None else spoken.numpy(),
            title=f"{item.target.id}, {mode} prompt text: AR attention onto the text (most focused layer)"))
    for name, run in (("codec", args.codec_run), ("lm", args.lm_run)):
        if run is None:
            continue
        try:
            figures["curves"] += plot_training_curves(read_scalars(run), plots / "curves", name)
        except FileNotFoundError as error:
            logger.warning("no %s training curves: %s", name, error)
    return {kind: [p.relative_to(out).as_posix() for p in paths] for kind, paths in figures.items()}


def main(argv: list[str] | None = None) -> Path:
    """Run the evaluation; returns the output directory."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out or args.model / "eval"
    utterances = read_manifest(args.manifest)
    speakers_file = args.speakers or args.manifest.parent / "speakers.json"
    families = read_voice_families(speakers_file) if speakers_file.is_file() else None
    if args.speakers is not None and families is None:
        raise FileNotFoundError(f"--speakers {args.speakers} does not exist")
    chosen = utterances
    if args.families:
        if families is None:
            raise SystemExit(f"--families needs the corpus' speakers.json ({speakers_file} is missing)")
        chosen = [u for u in utterances if families.get(u.speaker) in args.families]
    items = choose_items(chosen, families, args.max_items, args.seed)
    if not items:
        raise SystemExit(f"{args.manifest} has no speaker with two or more utterances: nothing to prompt with")

    tts = TTS.from_pretrained(args.model, device)
    asr, speaker, notes = load_meters(args, items[0].target.language, device)
    modes = {"both": PROMPT_MODES, "none": ()}.get(args.prompt_text, (args.prompt_text,))
    scorers = None  # TTS's default: the AR model's log-probability
    if args.rerank is not None:  # the meters loaded above judge the candidates too (or load if not asked for)
        scorers = scorers_by_name(args.rerank, asr=asr if asr is not None else args.asr,
                                  speaker=speaker if speaker is not None else args.speaker,
                                  language=items[0].target.language, device=device)
    sampling = replace(DEFAULT_SAMPLING, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       repetition_threshold=args.repetition_threshold, cfg_scale=args.cfg_scale)
    sampling = replace(sampling, cfg_scale=cfg_scale_for(tts.ar, sampling))  # the report records the scale used
    print(f"evaluating {len(items)} sentences by {len({i.target.speaker for i in items})} held-out speakers, "
          f"prompt text: {args.prompt_text}; ASR: {asr.name if asr else 'none'}, "
          f"speaker encoder: {speaker.name if speaker else 'none'}", flush=True)
    report = evaluate_tts(tts, items, utterances, asr=asr, speaker=speaker, prompt_modes=modes,
                          n_references=args.references, wav_dir=out / "wavs", keep_examples=args.examples,
                          meter_notes=notes, sampling=sampling, best_of=args.best_of, scorers=scorers,
                          targets=TARGETS[args.targets])

    figures = write_figures(report, tts, args, out)
    if report.codec is not None:
        write_examples(report.codec, tts.sample_rate, out / "codec_examples")
    command = "python recipes/evaluate.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    data = {"model": str(args.model), "manifest": str(args.manifest), "command": command, **report.to_dict(),
            "figures": figures, "seconds": round(time.perf_counter() - start, 1)}
    data["settings"].update(seed=args.seed, max_items=args.max_items, device=device, sampling=vars(sampling),
                            rerank=args.rerank or "logprob")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tts_table = report.to_markdown()
    tables = [f"`{command}`", "", "## Zero-shot synthesis on held-out voices", "", tts_table]
    if report.codec is not None:
        tables += ["## The model's codec on the same recordings", "", report.codec.to_markdown()]
    sections = [f"# Evaluation of {args.model}", "", *tables]
    if any(figures.values()):
        sections += ["## Figures", ""]
        sections += [f"![{Path(p).stem}]({p})" for paths in figures.values() for p in paths]
        if not figures["attention"]:
            sections += ["", "(no AR attention map: no synthesis succeeded)"]
    (out / "report.md").write_text("\n".join(sections) + "\n")
    print(tts_table)
    for kind, why in notes.items():
        print(f"note: no {kind} measurements: {why}")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {len(list((out / 'wavs').glob('*.wav')))} "
          f"syntheses in {out / 'wavs'} and {sum(map(len, figures.values()))} figures in {out / 'plots'} "
          f"({data['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
