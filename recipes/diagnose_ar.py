"""Where does a duration-guided AR lose the words? Its codebook 1 heard with less and less help.

    python recipes/diagnose_ar.py --model runs/quickstart/model --aligner runs/quickstart/aligner/model \\
        --manifest runs/quickstart/corpus/test.jsonl --families flite --max-items 36

The evaluation's items (the same sentences, voices, prompts and seeds as recipes/evaluate.py; no prompt
transcript). Echo's aligner gives each recording's timing, the text token each of its frames speaks.
Codebook 1 then comes from, in order of the help the AR gets:

    recording            the recording's own (the ceiling: evaluate.py's "recording's codebook 1 + NAR")
    teacher-forced top-1 the AR's most likely code, given the recording's codes before it and its timing
    teacher-forced       the same, drawn as synthesis draws (DEFAULT_SAMPLING)
    recording's timing   the AR's own codes, each fed back, its pointer moved on the recording's timing
    synthesis            the AR's own codes and timing: what synthesis writes

An AR trained with text dropout is guided by its text in every row as synthesis guides it (its default
`cfg_scale`, lm/generation.py). Each is completed by the NAR and decoded (`TTS.complete`) and heard by
the ASR. If teacher forcing already loses the words, the AR's per-frame distribution is what to improve; if the words go only
when its own codes are fed back, exposure to its own mistakes; if only with its own timing, the pointer.
Prints the table (WER, and ÷ the ground truth's with a paired 90 % interval) and writes it as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from app.evaluation import (GROUND_TRUTH, ItemResult, Rendering, choose_items, read_voice_families, summarize,
                            wer_ratio_interval)
from app.meters import load_asr, transcribe_all, word_errors
from app.tts import DEFAULT_SAMPLING, TTS
from data.audio import load_audio, resample
from data.manifest import read_manifest
from lm.aligner import Aligner
from lm.ar import ARModel
from lm.generation import cached_decoder, cfg_scale_for
from lm.sampling import SamplingConfig, guide, sample_next

SYSTEMS = {
    "recording": "recording's codebook 1",
    "teacher_forced_top1": "teacher-forced, most likely code",
    "teacher_forced": "teacher-forced, sampled",
    "recording_timing": "own codes on the recording's timing",
    "synthesis": "synthesis (own codes and timing)",
}


@dataclass
class Codebook1:
    """Codebook 1 of one item under each help level [T] (synthesis is rendered by TTS itself)."""

    recording: torch.Tensor
    teacher_forced_top1: torch.Tensor
    teacher_forced: torch.Tensor
    recording_timing: torch.Tensor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="exported model directory with a duration-guided AR")
    parser.add_argument("--aligner", type=Path, required=True, help="the aligner of the model's tokens (RUN/aligner/model)")
    parser.add_argument("--manifest", type=Path, required=True, help="held-out utterances (e.g. <corpus>/test.jsonl)")
    parser.add_argument("--families", nargs="+", default=None, help="only voices of these families (e.g. flite)")
    parser.add_argument("--max-items", type=int, default=None, help="at most this many sentences (default: all)")
    parser.add_argument("--asr", default="pocketsphinx", help="pocketsphinx, or a Whisper directory or hub id")
    parser.add_argument("--seed", type=int, default=0, help="chooses the prompts and seeds the draws")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return parser.parse_args(argv)


def _one(n: int) -> torch.Tensor:
    """The lengths of a batch of one item: [n]."""
    return torch.tensor([n])


def on_timing(ar: ARModel, text: torch.Tensor, prompt: torch.Tensor, alignment: torch.Tensor,
              choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], cfg_scale: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Write codebook 1 frame by frame with the pointer on a given timing, from the KV cache as synthesis does.

    text [N], prompt [K, P], alignment [T] (the token of each frame); choose(logits [C + 1], written [t]) -> the
    code of frame t (0-d), given the codes written before it; it is fed back. cfg_scale > 1 guides the logits by
    the text as synthesis does (a second item with the text hidden). Returns the codes [T] and each frame's
    logits [T, C + 1]."""
    T = len(alignment)
    decoder = cached_decoder(ar, text[None], _one(len(text)), prompt[None], _one(prompt.shape[1]), T,
                             alignment[:1], cfg_scale)
    logits = decoder.first()
    written, every = torch.zeros(T, dtype=torch.long), []
    for t in range(T):
        every.append(logits[0])
        written[t] = choose(logits[0], written[:t])
        if t + 1 < T:
            logits = decoder.next(written[t : t + 1], (alignment[t + 1] > alignment[t])[None])
    return written, torch.stack(every)


@torch.inference_mode()
def codebook1_variants(ar: ARModel, text: torch.Tensor, prompt: torch.Tensor, codes: torch.Tensor,
                       alignment: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> Codebook1:
    """text [N], prompt [K, P], codes [K, T] (the recording's), alignment [T] -> codebook 1 under each help level,
    guided by the text as `sampling` would guide synthesis."""
    T, eos = codes.shape[1], ar.config.eos_id
    cfg_scale = cfg_scale_for(ar, sampling)

    def forced(text: torch.Tensor) -> torch.Tensor:
        return ar(text[None], _one(len(text)), prompt[None], _one(prompt.shape[1]), codes[None], _one(T),
                  alignment=alignment[None]).logits[0, :T]  # [T, C + 1]

    logits = forced(text) if cfg_scale == 1.0 else guide(forced(text), forced(ar.hide_text(text)), cfg_scale)
    draw = lambda frame, history: sample_next(  # noqa: E731  (a frame is never EOS)
        frame[None, :eos].float(), history[None], sampling, generator)[0]
    truth = codes[0].long()
    drawn = torch.stack([draw(logits[t], truth[:t]) for t in range(T)])
    own, _ = on_timing(ar, text, prompt, alignment, draw, cfg_scale)
    return Codebook1(truth, logits[:, :eos].argmax(-1), drawn, own)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    tts = TTS.from_pretrained(args.model)
    if not tts.ar.config.duration_guided:
        raise SystemExit(f"{args.model}/ar is not a duration-guided AR: there is no pointer to put on the recording's timing")
    aligner = Aligner.from_pretrained(args.aligner, expect_codec=tts.codec.identity,
                                      expect_text_vocab=tts.ar.config.text_vocab)
    utterances = read_manifest(args.manifest)
    families = None
    if args.families:
        speakers_file = args.manifest.parent / "speakers.json"
        if not speakers_file.is_file():
            raise SystemExit(f"--families needs the corpus' speakers.json ({speakers_file} is missing)")
        families = read_voice_families(speakers_file)
        utterances = [u for u in utterances if families.get(u.speaker) in args.families]
    items = choose_items(utterances, families, args.max_items, args.seed)
    if not items:
        raise SystemExit(f"{args.manifest} has no speaker with two or more utterances (of {args.families})")
    asr = load_asr(args.asr, items[0].target.language)
    generator = torch.Generator().manual_seed(args.seed)
    results = []
    for item in tqdm(items, desc="diagnosing the AR", unit="item", disable=None):
        truth, truth_sr = load_audio(item.target.audio_path)
        prompt_wav, prompt_sr = load_audio(item.prompt.audio_path)
        language = item.target.language
        voice = tts.prepare_voice((prompt_wav[0], prompt_sr), None, language)
        text = torch.tensor(tts.frontend.encode(item.target.text, language))
        with torch.inference_mode():
            codes = tts.codec.encode(resample(truth, truth_sr, tts.sample_rate).to(tts.device)[None])[0].cpu()  # [K, T]
            durations = aligner.durations(text[None], torch.tensor([len(text)]), codes[None],
                                          torch.tensor([codes.shape[1]]))[0]
        alignment = torch.repeat_interleave(torch.arange(len(text)), durations.long())
        variants = codebook1_variants(tts.ar, text, voice.codes.long(), codes, alignment, DEFAULT_SAMPLING, generator)
        wavs = {name: tts.complete(item.target.text, c, voice, language) for name, c in vars(variants).items()}
        wavs["synthesis"] = tts.generate(item.target.text, voice=voice, seed=item.seed, language=language).wav
        result = ItemResult(item.target.id, item.target.speaker, item.family, item.target.text, item.prompt.id,
                            item.prompt.text, item.prompt.duration, item.seed)
        renderings = {GROUND_TRUTH: (truth[0].numpy(), truth_sr), **{s: (w, tts.sample_rate) for s, w in wavs.items()}}
        for (system, (wav, rate)), heard in zip(renderings.items(), transcribe_all(asr, list(renderings.values()))):
            count = word_errors(item.target.text, heard, language)
            result.renderings[system] = Rendering(len(wav) / rate, word_errors=count.errors, words=count.length)
        results.append(result)
    figures = diagnosis_figures(results)
    print(table(figures, len(results)))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"items": len(results), "systems": figures}, indent=2) + "\n")
    return figures


def diagnosis_figures(results: list[ItemResult]) -> dict[str, dict[str, float | None]]:
    """system -> WER, WER ÷ the ground truth's (the same sentences, so the ratio of their word errors) and
    its paired 90 % interval."""
    truth = summarize([r.renderings[GROUND_TRUTH] for r in results]).wer
    figures = {GROUND_TRUTH: {"wer": truth, "ratio": None, "low": None, "high": None}}
    for system in SYSTEMS:
        wer = summarize([r.renderings[system] for r in results]).wer
        interval = wer_ratio_interval(results, system)
        figures[system] = {"wer": wer, "ratio": wer / truth if truth else None,
                           "low": interval[0] if interval else None, "high": interval[1] if interval else None}
    return figures


def table(figures: dict[str, dict[str, float | None]], n_items: int) -> str:
    lines = [f"{n_items} items, no prompt transcript", "", "| codebook 1 | WER | WER ÷ GT |", "|---|---:|---|"]
    for system, f in figures.items():
        label = "ground truth (the recording)" if system == GROUND_TRUTH else SYSTEMS[system]
        ratio = "–" if f["ratio"] is None else f"{f['ratio']:.2f}" + (
            f" [{f['low']:.2f}–{f['high']:.2f}]" if f["low"] is not None else "")
        lines.append(f"| {label} | {f['wer']:.1%} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
