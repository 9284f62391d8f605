"""Make a trained model the one that ships with Echo: half-precision weights, voice presets and a card.

    python recipes/bundle_model.py --model runs/long/model --corpus runs/long/corpus \\
        --voice amy=spk005 --voice callum=spk017 --default amy

writes app/assets/ (app/bundled.py reads it; pyproject.toml ships it as package data):

- model/: the model's codec/, ar/, nar/ and text/, every float32 weight stored as float16 (half the
  size; loading copies them back into float32 modules);
- voices/NAME.voice: for each --voice NAME=SPEAKER, `TTS.prepare_voice` (with the bundled model) on
  a recording of SPEAKER from the corpus's test.jsonl, a held-out voice: the first one that lasts
  --prompt-seconds, with its transcript;
- card.json: where all of it came from (the run, its quickstart settings, the voices' speakers and
  recordings) and what the half precision changes: the same sentences synthesized by the float32
  and the bundled model with the same seeds, compared code for code and sample for sample.

It replaces what app/assets/ held: the repository carries one bundled model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from app import bundled
from app.tts import TTS
from data.manifest import Utterance, read_manifest
from data.pretrained import write_directory

# Compared between the float32 model and its half-precision copy (none of them is a prompt).
CHECK_SENTENCES = (
    "The children found a tiny kite near the bridge.",
    "We waited almost twenty minutes for the bus.",
    "She sold her bicycle to buy a ticket to the coast.",
    "Nobody expected the meeting to last until midnight.",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the exported model (codec/, ar/, nar/, text/)")
    parser.add_argument("--corpus", type=Path, required=True,
                        help="the built-in corpus it was trained on (its test.jsonl and speakers.json: the held-out "
                             "voices)")
    parser.add_argument("--voice", action="append", required=True, metavar="NAME=SPEAKER",
                        help="a bundled voice: its name and the held-out speaker it is made from (repeatable)")
    parser.add_argument("--default", required=True, help="the voice that speaks when none is asked for")
    parser.add_argument("--prompt-seconds", type=float, nargs=2, default=(3.0, 6.0), metavar=("MIN", "MAX"),
                        help="how long a voice's recording may be (default 3 to 6 s)")
    parser.add_argument("--run", type=Path, default=None,
                        help="the run directory that trained the model (its quickstart.json goes into the card)")
    parser.add_argument("--out", type=Path, default=bundled.ASSETS_DIR, help="default: app/assets (the package's)")
    return parser.parse_args(argv)


def parse_voices(specs: list[str], default: str) -> dict[str, str]:
    voices = {}
    for spec in specs:
        name, _, speaker = spec.partition("=")
        if not name or not speaker or not name.replace("-", "").replace("_", "").isalnum():
            raise SystemExit(f"--voice {spec!r}: expected NAME=SPEAKER, NAME of letters, digits, '-' and '_'")
        voices[name] = speaker
    if default not in voices:
        raise SystemExit(f"--default {default!r} is none of the --voice names ({', '.join(voices)})")
    return voices


def choose_recording(utterances: list[Utterance], speaker: str, seconds: tuple[float, float]) -> Utterance:
    """The speaker's first test recording whose length is within `seconds`."""
    own = [u for u in utterances if u.speaker == speaker]
    if not own:
        raise SystemExit(f"speaker {speaker} has no recording in the test manifest: bundled voices are held-out ones")
    for utterance in own:
        if seconds[0] <= utterance.duration <= seconds[1]:
            return utterance
    raise SystemExit(f"speaker {speaker} has no test recording of {seconds[0]:g}-{seconds[1]:g} s")


def compare_precisions(full: TTS, half: TTS, voice_path: Path) -> dict[str, float]:
    """The same sentences and seeds through the float32 model and its half-precision copy."""
    same_codes = total_codes = 0
    worst = 0.0
    for seed, sentence in enumerate(CHECK_SENTENCES):
        a = full.generate(sentence, voice=voice_path, seed=seed)
        b = half.generate(sentence, voice=voice_path, seed=seed)
        for sa, sb in zip(a.segments, b.segments):
            ca, cb = sa.chosen.codes1, sb.chosen.codes1
            n = min(len(ca), len(cb))
            same_codes += int((ca[:n] == cb[:n]).sum())
            total_codes += max(len(ca), len(cb))
        if len(a.wav) == len(b.wav):
            worst = max(worst, float(np.abs(a.wav - b.wav).max()))
    return {"sentences": len(CHECK_SENTENCES), "codebook1_agreement": round(same_codes / max(total_codes, 1), 4),
            "largest_sample_difference": round(worst, 5)}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    voices = parse_voices(args.voice, args.default)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    out = Path(args.out)
    model_dir = bundled.save_half_precision(args.model, out / "model")
    full, half = TTS.from_pretrained(args.model), TTS.from_pretrained(model_dir)

    test = read_manifest(args.corpus / "test.jsonl")
    speakers = {s["id"]: s for s in json.loads((args.corpus / "speakers.json").read_text())["speakers"]}
    described = {}

    def write_voices(tmp: Path) -> None:
        for name, speaker in voices.items():
            recording = choose_recording(test, speaker, tuple(args.prompt_seconds))
            voice = half.prepare_voice(recording.audio_path, recording.text, recording.language)
            voice.source = f"{recording.id} of the built-in corpus (held-out speaker {speaker})"
            voice.save(tmp / f"{name}{bundled.VOICE_SUFFIX}")
            about = speakers.get(speaker, {})
            described[name] = {
                "speaker": speaker, "recording": recording.id, "transcript": recording.text,
                "description": ", ".join(str(about[k]) for k in ("engine", "voice", "gender", "accent") if k in about),
            }

    shutil.rmtree(out / "voices", ignore_errors=True)  # the voices of a model bundled before go with it
    write_directory(out / "voices", write_voices, marker=f"{args.default}{bundled.VOICE_SUFFIX}")
    precision = compare_precisions(full, half, out / "voices" / f"{args.default}{bundled.VOICE_SUFFIX}")
    run_state = args.run / "quickstart.json" if args.run is not None else None
    card = {
        "made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "echo_commit": git_commit(),
        "source_model": str(args.model),
        "corpus": str(args.corpus),
        "training": json.loads(run_state.read_text())["stages"] if run_state and run_state.is_file() else None,
        "default_voice": args.default,
        "voices": described,
        "half_precision": precision,
        "size_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
    }
    bundled.write_card(card, out / "card.json")
    print(f"wrote {out}: {card['size_bytes'] / 2**20:.1f} MiB; voices {', '.join(described)} "
          f"(default {args.default})")
    print(f"half precision against float32 on {precision['sentences']} sentences: codebook 1 agreement "
          f"{precision['codebook1_agreement']:.2%}, largest sample difference {precision['largest_sample_difference']}")
    return out


if __name__ == "__main__":
    main()
