"""How predictable is each codebook from what the NAR sees? Lookup-table baselines on token shards.

    python recipes/codebook_predictability.py --tokens runs/quickstart/tokens

For each codebook j, the dev top-1 accuracy of tables counted on the train split:
- unigram: the most frequent code of codebook j;
- below: the most frequent code j given codebook j - 1 of the same frame (the NAR's strongest
  single clue; j = 1: given nothing else, so the unigram);
- previous frame: given codebook j of the frame before (what the AR's history offers).
A NAR far above these baselines learns more than a lookup; one at their level learns what the
data allows for a few hundred steps. Chance is 1 / codebook_size.
"""

from __future__ import annotations

import argparse
import json

import torch

from data.tokens import TokenCorpus


def table_accuracy(train_keys: torch.Tensor, train_values: torch.Tensor, dev_keys: torch.Tensor,
                   dev_values: torch.Tensor, n_keys: int, n_values: int) -> float:
    """Top-1 on dev of predicting value from key by the most frequent value of that key on train."""
    counts = torch.zeros(n_keys, n_values)
    counts.index_put_((train_keys, train_values), torch.ones(len(train_keys)), accumulate=True)
    best = counts.argmax(1)  # [n_keys]; unseen keys fall back to the global mode below
    best[counts.sum(1) == 0] = int(counts.sum(0).argmax())
    return float((best[dev_keys] == dev_values).float().mean())


def frames(corpus: TokenCorpus) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames [F, K] and each frame's previous frame [F, K] (the first frame of an utterance: itself)."""
    current, previous = [], []
    for i in range(len(corpus)):
        codes = corpus[i].codes.t()  # [T, K]
        current.append(codes)
        previous.append(torch.cat([codes[:1], codes[:-1]]))
    return torch.cat(current), torch.cat(previous)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", required=True, help="token directory with train and dev splits")
    args = parser.parse_args(argv)
    train, train_previous = frames(TokenCorpus.open(args.tokens, splits="train"))
    dev, dev_previous = frames(TokenCorpus.open(args.tokens, splits="dev"))
    C = TokenCorpus.open(args.tokens).codec_identity.codebook_size
    zeros_train, zeros_dev = torch.zeros(len(train), dtype=torch.long), torch.zeros(len(dev), dtype=torch.long)
    result = {}
    for j in range(1, train.shape[1] + 1):
        k = j - 1
        below_train, below_dev = (train[:, k - 1], dev[:, k - 1]) if j > 1 else (zeros_train, zeros_dev)
        result[f"codebook_{j}"] = {
            "unigram": table_accuracy(zeros_train, train[:, k], zeros_dev, dev[:, k], 1, C),
            "below": table_accuracy(below_train, train[:, k], below_dev, dev[:, k], C, C),
            "previous_frame": table_accuracy(train_previous[:, k], train[:, k], dev_previous[:, k], dev[:, k], C, C),
        }
    print(f"dev top-1 of lookup tables counted on train (chance {1 / C:.4f}):")
    for name, row in result.items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
