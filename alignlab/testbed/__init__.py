"""The testbed: a seeded synthetic instruction world with a hidden gold scorer.

It is the embedded default that makes every stage of the pipeline measurable on a laptop CPU
with nothing downloaded: tiny models are pretrained, fine-tuned and aligned on it, and whether
alignment worked is read off one number, the gold score, going up.

The world is small and fixed: twelve people (Mira, Tomas, ...) with a favourite color, a pet and
a town; words for lists (colors, pets, fruits); numbers 0 to 20. Seven task families ask about
it — addition, subtraction, comparison, counting, picking a word from a list, reversing a list,
and facts about the people. Every prompt has one correct answer, computable from its text.

As in LIMA, knowledge comes from pretraining and format from alignment:

- ``pretraining_corpus`` states the facts as plain sentences ("3 plus 4 is 7.", "Mira lives in
  Oakvale."), with no chat markup;
- ``sft_records`` shows the answer format ("The answer is 7.") but a share of its annotators
  are sloppy (filler openings, hedging, rambling, wrong answers), so SFT alone stays imperfect;
- ``preference_pairs`` and ``rankings`` are labelled by the gold scorer (pairs with label noise);
- ``rl_prompts`` and ``eval_prompts`` come from disjoint splits of the task instances;
- ``gold_response_score`` rewards correctness (0.6) and clean format (0.4); ``gold_score`` runs
  a model on the held-out prompts and reports the mean.

Example:
    >>> from alignlab import testbed
    >>> prompt = testbed.eval_prompts(1)[0]
    >>> testbed.gold_response_score("What is 3 plus 4?", "The answer is 7.")
    1.0
    >>> testbed.gold_response_score("What is 3 plus 4?", "Um, well, the answer is 7, I think, maybe.") < 0.7
    True

See docs/testbed.md for the full description.
"""

from __future__ import annotations

from alignlab.testbed.data import (
    TESTBED_VERSION,
    SourceName,
    eval_prompts,
    preference_pairs,
    pretraining_corpus,
    rankings,
    rl_prompts,
    sft_records,
    source,
    tokenizer_corpus,
)
from alignlab.testbed.gold import (
    Judgement,
    correctness,
    gold_preference,
    gold_response_score,
    gold_reward_fn,
    gold_score,
    is_correct,
    judge,
    score_responses,
)
from alignlab.testbed.styles import Defect
from alignlab.testbed.world import Split, TaskFamily, parse_prompt

__all__ = [
    "TESTBED_VERSION",
    "Defect",
    "Judgement",
    "SourceName",
    "Split",
    "TaskFamily",
    "correctness",
    "eval_prompts",
    "gold_preference",
    "gold_response_score",
    "gold_reward_fn",
    "gold_score",
    "is_correct",
    "judge",
    "parse_prompt",
    "preference_pairs",
    "pretraining_corpus",
    "rankings",
    "rl_prompts",
    "score_responses",
    "sft_records",
    "source",
    "tokenizer_corpus",
]
