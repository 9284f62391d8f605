"""Compare two evaluations of the same items: did a change lower the word errors, or move the voices
closer to their speakers, beyond the noise?

    python recipes/compare_evaluations.py runs/before/eval/report.json runs/after/eval/report.json

For each system that both reports rendered (ground truth, codec, the syntheses, ...), prints the
relative change of its total word errors from the first report to the second, with a 90 %
paired bootstrap interval over the items both evaluated: each resampled item brings its word
errors in both reports, so the interval reflects how the change varies from sentence to
sentence, not the larger spread between sentences. Where both reports synthesized each item with
and without the prompt's transcript, a last row pools the two (an item is resampled with both of
its syntheses): twice the syntheses, so a tighter interval for a change that touches both modes.
A second table does the same for the similarity to the speaker's own voice (`sim_own`): the mean
of each item's difference, after - before, with its paired interval.
Use it on two runs of `recipes/evaluate.py` with the same manifest, --max-items, --families and
--seed (the same sentences and prompts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.evaluation import PROMPT_MODES, SYSTEM_LABELS, similarity_change, synthesis_system, word_error_change


def read_renderings(path: Path) -> dict[str, dict]:
    """report.json -> item id -> system -> rendering."""
    try:
        report = json.loads(path.read_text())
        return {item["id"]: item["renderings"] for item in report["items"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{path} is not a report.json written by recipes/evaluate.py: {error}") from None


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="report.json of the baseline")
    parser.add_argument("after", type=Path, help="report.json of the change")
    args = parser.parse_args(argv)
    before, after = read_renderings(args.before), read_renderings(args.after)
    shared = set(before) & set(after)
    if not shared:
        raise SystemExit(f"{args.before} and {args.after} share no items: evaluate the same manifest and seed")
    systems = [s for s in SYSTEM_LABELS if any(s in before[i] and s in after[i] for i in shared)]
    lines = [f"{len(shared)} items in both reports; relative change of the word errors, 90 % paired interval:", "",
             "| system | items | change | interval |", "|---|---:|---:|---|"]
    rows = [(SYSTEM_LABELS[system], system, "") for system in systems]
    both_modes = [synthesis_system(mode) for mode in PROMPT_MODES]
    if set(both_modes) <= set(systems):
        rows.append(("syntheses, both prompt modes pooled", both_modes, " x 2"))
    for label, pooled, per_item in rows:
        found = word_error_change(before, after, pooled)
        if found is not None:
            change, low, high, items = found
            lines.append(f"| {label} | {items}{per_item} | {change:+.1%} | [{low:+.1%}, {high:+.1%}] |")
    similarity = [(label, items, per_item, found) for label, items, per_item in rows
                  if (found := similarity_change(before, after, items)) is not None]
    if similarity:
        lines += ["", "Change of the similarity to the speaker's own voice (mean of the items' differences, "
                  "cosine), 90 % paired interval:", "", "| system | items | change | interval |", "|---|---:|---:|---|"]
        for label, _, per_item, (change, low, high, items) in similarity:
            lines.append(f"| {label} | {items}{per_item} | {change:+.3f} | [{low:+.3f}, {high:+.3f}] |")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
