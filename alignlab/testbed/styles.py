"""How answers are written: the one clean format and the sloppy annotators' habits.

The clean format is one short sentence, ``The answer is 7.`` Sloppy annotators add one or two
defects: a filler opening, a hedging tail, rambling repetition, or simply a wrong answer. The
same renderer writes SFT demonstrations, the alternatives in preference pairs and rankings, and
the tokenizer corpus, so a reward model sees exactly the habits it has to learn to punish.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence

FRAME = "The answer is {answer}."
FILLERS = ("Um, well,", "Hmm, so,", "Okay, uh,", "Well, let me see,", "So, um,")
HEDGES = ("I think, maybe.", "but I am not sure.", "probably, I guess.", "or so I think.")
RAMBLES = (
    "Yes, the answer is {answer}.",
    "So it is {answer}.",
    "Let me say it again, the answer is {answer}.",
    "The answer is {answer}, the answer is {answer}.",
)


class Defect(str, enum.Enum):
    """One habit of a sloppy annotator."""

    FILLER = "filler"  # "Um, well, the answer is 7."
    HEDGE = "hedge"  # "The answer is 7, I think, maybe."
    RAMBLE = "ramble"  # "The answer is 7. Yes, the answer is 7."
    WRONG = "wrong"  # "The answer is 8."

    def __str__(self) -> str:
        return self.value


STYLE_DEFECTS = (Defect.FILLER, Defect.HEDGE, Defect.RAMBLE)


def answer_text(words: Sequence[str]) -> str:
    """``("fox", "owl", "cat")`` -> ``"fox, owl, cat"``; one word stays as it is."""
    return ", ".join(words)


def clean_response(words: Sequence[str]) -> str:
    """The target format: ``The answer is 7.``"""
    return FRAME.format(answer=answer_text(words))


def render(words: Sequence[str], defects: Iterable[Defect], rng: random.Random) -> str:
    """Write an answer with the given style defects (WRONG is the caller's business: pass wrong words).

    Args:
        words: the answer's words, already right or wrong.
        defects: any of FILLER, HEDGE, RAMBLE (WRONG is ignored here).
        rng: picks the filler, hedge and rambling phrases.
    """
    defects = set(defects)
    answer = answer_text(words)
    if Defect.FILLER in defects:
        text = f"{rng.choice(FILLERS)} the answer is {answer}"
    else:
        text = f"The answer is {answer}"
    text += f", {rng.choice(HEDGES)}" if Defect.HEDGE in defects else "."
    if Defect.RAMBLE in defects:
        text += " " + rng.choice(RAMBLES).format(answer=answer)
    return text


def sample_defects(rng: random.Random, sloppy_share: float, wrong_weight: float = 1.0) -> frozenset[Defect]:
    """The defects of one annotation: none with probability ``1 - sloppy_share``, else one or two.

    Args:
        rng: the generator's random stream.
        sloppy_share: probability that the annotation has any defect.
        wrong_weight: weight of WRONG against 1 for each style defect when defects are drawn.
    """
    if rng.random() >= sloppy_share:
        return frozenset()
    pool = {defect: (wrong_weight if defect is Defect.WRONG else 1.0) for defect in Defect}
    chosen: set[Defect] = set()
    for _ in range(1 if rng.random() < 0.7 else 2):
        defect = rng.choices(list(pool), weights=list(pool.values()))[0]
        chosen.add(defect)
        del pool[defect]
    return frozenset(chosen)
