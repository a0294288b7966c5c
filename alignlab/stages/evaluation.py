"""End-of-stage evaluation shared by the stages (gold score on the testbed)."""

from __future__ import annotations

import logging
from typing import Any

from alignlab.stages.groups import EvalGroup

log = logging.getLogger("alignlab")


def uses_testbed(*sources: str | None) -> bool:
    """Whether any data source is the synthetic testbed (where the gold scorer means something)."""
    return any(s and s.startswith("testbed:") for s in sources)


def gold_metrics(model: Any, tokenizer: Any, cfg: EvalGroup, on_testbed: bool) -> dict[str, float]:
    """``gold_score`` and ``gold_accuracy`` on held-out testbed prompts, when enabled and meaningful."""
    if not (cfg.gold and on_testbed):
        return {}
    from alignlab.testbed import gold_score

    result = gold_score(model, tokenizer=tokenizer, n=cfg.gold_n, max_new_tokens=cfg.max_new_tokens)
    log.info("gold score %.3f, gold accuracy %.3f", result["gold_score"], result["gold_accuracy"])
    return {"gold_score": float(result["gold_score"]), "gold_accuracy": float(result["gold_accuracy"])}
