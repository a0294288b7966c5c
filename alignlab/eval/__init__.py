"""Evaluation: perplexity, multiple choice, win rate / judge, reward accuracy, best-of-N,
over-optimisation, and the HTML report. See docs/evaluation.md.

Names import on first use, so ``import alignlab.eval.best_of_n`` stays light.

Example:
    >>> from alignlab.eval import text_perplexity, win_rate, write_report  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "text_perplexity": "alignlab.eval.perplexity",
    "TextPerplexity": "alignlab.eval.perplexity",
    "Question": "alignlab.eval.multiple_choice",
    "load_questions": "alignlab.eval.multiple_choice",
    "evaluate_multiple_choice": "alignlab.eval.multiple_choice",
    "MultipleChoiceResult": "alignlab.eval.multiple_choice",
    "LLMJudge": "alignlab.eval.judge",
    "PairVerdict": "alignlab.eval.judge",
    "win_rate": "alignlab.eval.winrate",
    "judge_responses": "alignlab.eval.winrate",
    "WinRateResult": "alignlab.eval.winrate",
    "reward_accuracy": "alignlab.eval.reward_accuracy",
    "evaluate_reward_accuracy": "alignlab.eval.reward_accuracy",
    "RewardAccuracyResult": "alignlab.eval.reward_accuracy",
    "best_of_n_eval": "alignlab.eval.overoptimization",
    "BestOfNResult": "alignlab.eval.overoptimization",
    "overoptimization": "alignlab.eval.overoptimization",
    "OverOptimizationResult": "alignlab.eval.overoptimization",
    "plot_overoptimization": "alignlab.eval.overoptimization",
    "write_report": "alignlab.eval.report",
    "gold_breakdown": "alignlab.eval.gold_breakdown",
    "reward_sees_correctness": "alignlab.eval.gold_breakdown",
    "GoldBreakdown": "alignlab.eval.gold_breakdown",
    "CorrectnessProbe": "alignlab.eval.gold_breakdown",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alignlab.eval' has no attribute {name!r}")
