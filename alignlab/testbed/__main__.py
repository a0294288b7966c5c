"""``python -m alignlab.testbed``: sanity numbers of the testbed's data against its gold scorer."""

from __future__ import annotations

import argparse
from collections import Counter

from alignlab.testbed.data import TESTBED_VERSION, eval_prompts, preference_pairs, rankings, sft_records
from alignlab.testbed.gold import gold_response_score, is_correct
from alignlab.testbed.world import parse_prompt


def sanity(
    n: int = 2000, seed: int = 0, sloppy_share: float = 0.35, label_noise: float = 0.1
) -> dict[str, float]:
    """Gold scores of the generated data itself: what SFT imitates and what a reward model sees."""
    demos = [
        (r["messages"][0]["content"], r["messages"][1]["content"]) for r in sft_records(n, seed, sloppy_share)
    ]
    pairs = preference_pairs(n, seed, label_noise)
    chosen = [gold_response_score(p["prompt"], p["chosen"]) for p in pairs]
    rejected = [gold_response_score(p["prompt"], p["rejected"]) for p in pairs]
    ranked = rankings(max(1, n // 4), 4, seed)
    by_rank = Counter()
    for record in ranked:
        for r in record["responses"]:
            by_rank[r["rank"]] += gold_response_score(record["prompt"], r["text"])
    return {
        "sft_demo_gold_score": sum(gold_response_score(p, r) for p, r in demos) / n,
        "sft_demo_accuracy": sum(is_correct(p, r) for p, r in demos) / n,
        "chosen_gold_score": sum(chosen) / n,
        "rejected_gold_score": sum(rejected) / n,
        "gold_prefers_chosen": sum(c > r for c, r in zip(chosen, rejected)) / n,
        **{f"ranking_rank{k}_gold_score": v / len(ranked) for k, v in sorted(by_rank.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m alignlab.testbed", description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sloppy-share", type=float, default=0.35)
    parser.add_argument("--label-noise", type=float, default=0.1)
    args = parser.parse_args()
    print(f"testbed version {TESTBED_VERSION}")
    for key, value in sanity(args.n, args.seed, args.sloppy_share, args.label_noise).items():
        print(f"{key:28s} {value:.3f}")
    families = Counter(str(parse_prompt(p).family) for p in eval_prompts(200))
    print("eval_prompts(200) by family:", dict(families))


if __name__ == "__main__":
    main()
