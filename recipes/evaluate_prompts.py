"""Clone the voices of given recordings (real human speech, say) and measure words and voice.

    python recipes/evaluate_prompts.py --prompts a.wav b.mp3 c.flac              # the bundled model
    python recipes/evaluate_prompts.py --model runs/long/model --prompts DIR/*.wav --sentences 10

recipes/evaluate.py needs a corpus with the held-out speakers' own recordings of each sentence;
here there are only the prompts. Each prompt (without a transcript) speaks `--sentences` sentences
that no training corpus of Echo holds, and the meters of app/meters.py hear them:

- words: pocketsphinx's word error rate against the sentence (pooled over the sentences);
- voice: resemblyzer's similarity of each synthesis to its own prompt, against its similarity to
  the other prompts (the voices it should not sound like); `prompts own - others` is how far
  apart the prompts themselves are, the most the syntheses could separate.

Prints a markdown table, one row per prompt and their mean.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from app.meters import ErrorCount, load_asr, load_speaker, word_errors
from app.prompt import prepare_prompt
from app.tts import TTS

SENTENCES = (  # held-out sentences of the built-in corpus (its test split); tests/test_shipped_model.py reads them
    "There are 73 pancakes in the old mill.",
    "At dawn, his roommate hesitated proudly.",
    "The scientist said that the candle was dark.",
    "He threw the silver radio carefully because Lily was confused.",
    "On Wednesday, Peter surprised him patiently.",
    "Jasmine told us that the television was old.",
    "Patrick was sharing the sugar at the enormous desert.",
    "Your patient aunt cleans their chair once a month.",
    "Would you like some tea with your biscuit?",
    "Jack could study your book after dinner.",
)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an exported model directory (default: the bundled model)")
    parser.add_argument("--prompts", type=Path, nargs="+", required=True, help="recordings of the voices to clone")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help=f"at most {len(SENTENCES)}")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if len(args.prompts) < 2:
        parser.error("give at least two prompts: each voice is compared with the others")

    torch.set_num_threads(args.threads)
    tts, asr, speaker = TTS.from_pretrained(args.model), load_asr("pocketsphinx"), load_speaker("resemblyzer")
    sentences = SENTENCES[: args.sentences]
    prompts = {path: prepare_prompt(path, tts.sample_rate) for path in args.prompts}
    embedded = {path: speaker.embed(prompt.wav.numpy(), prompt.sample_rate) for path, prompt in prompts.items()}
    rows = []
    for path in args.prompts:
        voice = tts.prepare_voice(path)
        errors, own, others = ErrorCount(0, 0), [], []
        for seed, sentence in enumerate(sentences):
            wav, rate = tts.synthesize(sentence, voice=voice, seed=seed)
            errors += word_errors(sentence, asr.transcribe(wav, rate))
            embedding = speaker.embed(wav, rate)
            own.append(float(embedding @ embedded[path]))
            others.append(statistics.mean(float(embedding @ e) for p, e in embedded.items() if p != path))
        prompt_others = statistics.mean(float(embedded[path] @ e) for p, e in embedded.items() if p != path)
        rows.append({"prompt": path.name, "seconds": prompts[path].duration, "wer": errors.rate,
                     "own": statistics.mean(own), "others": statistics.mean(others),
                     "prompt_separation": 1.0 - prompt_others})
        print(f"{path.name}: WER {errors.rate:.1%}, similarity own {rows[-1]['own']:.3f}, others "
              f"{rows[-1]['others']:.3f}", flush=True)

    print(f"\n{len(sentences)} sentences per prompt, without the prompts' transcripts\n")
    print("| prompt | seconds used | WER | similarity own | others | own − others | prompts own − others |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows + [_mean_row(rows)]:
        print(f"| {row['prompt']} | {row['seconds']:.1f} | {row['wer']:.1%} | {row['own']:.3f} | {row['others']:.3f} "
              f"| {row['own'] - row['others']:.3f} | {row['prompt_separation']:.3f} |")
    return rows


def _mean_row(rows: list[dict]) -> dict:
    return {"prompt": "mean", **{key: float(np.mean([row[key] for row in rows]))
                                 for key in ("seconds", "wer", "own", "others", "prompt_separation")}}


if __name__ == "__main__":
    main()
