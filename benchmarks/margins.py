"""What LLaMA-2's rating margins do to reward-model accuracy on the testbed, split by how far
apart a pair is (issue 18 §2). LLaMA-2 (Touvron et al. 2023, Table 28) reports the gain on the
clearly separable pairs ("significantly better") and a small loss on the similar ones.

    .venv/bin/python benchmarks/margins.py [--size test] [--pairs 2000] [--seeds 0 1 2]

For each seed, one tiny base and three reward models trained on the same pairs with
``loss.rating_margins`` none, small and large; gold accuracy per rating on 1,000 fresh gold pairs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from alignlab.data.ratings import LEVELS
from alignlab.registry import Registry
from alignlab.stages.reward import RewardModel
from alignlab.stages.sft import SFT
from alignlab.stages.tiny_base import TinyBase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="test")
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--gold", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"none": [], "small": [], "large": []}
    with tempfile.TemporaryDirectory() as root:
        registry = Registry(root)
        base = TinyBase({"size": args.size, "eval": {"gold": False}}).run(registry)
        sft = SFT({"train": {"epochs": 2, "lr": 1e-3, "batch_size": 32}, "eval": {"gold": False}}).run(
            registry, model=base.ref
        )
        for seed in args.seeds:
            for margins in results:
                art = RewardModel(
                    {
                        "output": f"rm-{margins}-{seed}",
                        "data": {"source": f"testbed:preferences?n={args.pairs}"},
                        "loss": {"rating_margins": margins},
                        "train": {"epochs": 1, "lr": 3e-4, "batch_size": 16, "seed": seed},
                        "eval": {"gold_n": args.gold},
                    }
                ).run(registry, model=sft.ref)
                results[margins].append(art.metrics)
    print(f"gold accuracy by rating, {args.size} model, {args.pairs} pairs, seeds {args.seeds} (mean ± sd)")
    print("| margins | all | " + " | ".join(LEVELS) + " |")
    print("|---|---|" + "---|" * len(LEVELS))
    for margins, runs in results.items():

        def cell(values: list[float]) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} ± {sd:.3f}"

        per_level = [cell([r["gold_accuracy_by_rating"][lv]["accuracy"] for r in runs]) for lv in LEVELS]
        print(f"| {margins} | {cell([r['gold_accuracy'] for r in runs])} | " + " | ".join(per_level) + " |")
    pairs = {lv: runs[0]["gold_accuracy_by_rating"][lv]["pairs"] for lv in LEVELS}
    print("gold pairs per rating:", pairs)


if __name__ == "__main__":
    main()
