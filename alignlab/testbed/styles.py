"""How answers are written: the one clean format, the sloppy habits, and who writes what.

The clean format is one short sentence, ``The answer is 7.`` Sloppy answers carry one or two
defects: a filler opening, a hedging tail, rambling repetition, or simply a wrong answer. The
same renderer writes SFT demonstrations, the alternatives in preference pairs and rankings, and
the tokenizer corpus, so a reward model sees exactly the habits it has to learn to punish.

Annotators have habits. Each task family is answered by one annotator: a careful one for most
families, and for three of them someone with one fixed tic ("Um, well," before every answer,
"I think, maybe." after it, or saying it twice). So the sloppiness is not spread thinly over all
prompts, where greedy decoding would average it away: on the habitual families it is the most
likely answer, an SFT model reproduces it, and alignment has to undo it.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from alignlab.testbed.world import TaskFamily

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
    """One flaw of a sloppy answer."""

    FILLER = "filler"  # "Um, well, the answer is 7."
    HEDGE = "hedge"  # "The answer is 7, I think, maybe."
    RAMBLE = "ramble"  # "The answer is 7. Yes, the answer is 7."
    WRONG = "wrong"  # "The answer is 8."

    def __str__(self) -> str:
        return self.value


STYLE_DEFECTS = (Defect.FILLER, Defect.HEDGE, Defect.RAMBLE)
_PHRASES: dict[Defect, tuple[str, ...]] = {
    Defect.FILLER: FILLERS,
    Defect.HEDGE: HEDGES,
    Defect.RAMBLE: RAMBLES,
}


@dataclass(frozen=True)
class Annotator:
    """A demonstrator: careful (no habit), or with one habit always phrased the same way.

    Attributes:
        name: for people reading the data.
        habit: the defect this annotator adds when sloppy; None for the careful annotator.
        phrase: index of the habit's phrase in FILLERS / HEDGES / RAMBLES.
    """

    name: str
    habit: Defect | None = None
    phrase: int = 0


CAREFUL = Annotator("careful")
UM_WELL = Annotator("um_well", Defect.FILLER, 0)  # "Um, well, the answer is 7."
HMM_SO = Annotator("hmm_so", Defect.FILLER, 1)  # "Hmm, so, the answer is 7."
THINK_MAYBE = Annotator("think_maybe", Defect.HEDGE, 0)  # "The answer is 7, I think, maybe."
NOT_SURE = Annotator("not_sure", Defect.HEDGE, 1)  # "The answer is 7, but I am not sure."
YES_AGAIN = Annotator("yes_again", Defect.RAMBLE, 0)  # "The answer is 7. Yes, the answer is 7."
SAY_AGAIN = Annotator("say_again", Defect.RAMBLE, 2)  # "... Let me say it again, the answer is 7."

# Who answers which family; the families not listed are answered by the careful annotator. A
# whole family per annotator (as when task types are farmed out to different annotator pools)
# makes the habit easy to tie to the prompt, even for a tiny model.
HABITS: dict[TaskFamily, Annotator] = {
    TaskFamily.COMPARISON: YES_AGAIN,
    TaskFamily.COUNTING: UM_WELL,
    TaskFamily.WORLD_FACT: THINK_MAYBE,
}
HABIT_EXTRA_WRONG = 0.25  # a habitual annotator's sloppy answer is also wrong this often
HABIT_EXTRA_STYLE = 0.15  # ... and carries a second style defect this often


def annotator_of(family: TaskFamily) -> Annotator:
    """The annotator who answers prompts of this family (``HABITS``, else the careful one)."""
    return HABITS.get(family, CAREFUL)


def answer_text(words: Sequence[str]) -> str:
    """``("fox", "owl", "cat")`` -> ``"fox, owl, cat"``; one word stays as it is."""
    return ", ".join(words)


def clean_response(words: Sequence[str]) -> str:
    """The target format: ``The answer is 7.``"""
    return FRAME.format(answer=answer_text(words))


def render(
    words: Sequence[str],
    defects: Iterable[Defect],
    rng: random.Random,
    phrases: Mapping[Defect, int] | None = None,
) -> str:
    """Write an answer with the given style defects (WRONG is the caller's business: pass wrong words).

    Args:
        words: the answer's words, already right or wrong.
        defects: any of FILLER, HEDGE, RAMBLE (WRONG is ignored here).
        rng: picks the filler, hedge and rambling phrases.
        phrases: fixed phrase indices by defect (an annotator's habit); others are drawn.
    """
    defects = set(defects)
    fixed = phrases or {}

    def phrase(defect: Defect) -> str:
        options = _PHRASES[defect]
        return options[fixed[defect]] if defect in fixed else rng.choice(options)

    answer = answer_text(words)
    text = (
        f"{phrase(Defect.FILLER)} the answer is {answer}"
        if Defect.FILLER in defects
        else f"The answer is {answer}"
    )
    text += f", {phrase(Defect.HEDGE)}" if Defect.HEDGE in defects else "."
    if Defect.RAMBLE in defects:
        text += " " + phrase(Defect.RAMBLE).format(answer=answer)
    return text


def sample_defects(rng: random.Random, sloppy_share: float, wrong_weight: float = 1.0) -> frozenset[Defect]:
    """The defects of one answer: none with probability ``1 - sloppy_share``, else one or two.

    Args:
        rng: the generator's random stream.
        sloppy_share: probability that the answer has any defect.
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


def habit_defects(annotator: Annotator, rng: random.Random) -> frozenset[Defect]:
    """A sloppy answer of a habitual annotator: the habit, sometimes also wrong or a second flaw."""
    assert annotator.habit is not None
    defects = {annotator.habit}
    if rng.random() < HABIT_EXTRA_WRONG:
        defects.add(Defect.WRONG)
    if rng.random() < HABIT_EXTRA_STYLE:
        defects.add(rng.choice([d for d in STYLE_DEFECTS if d is not annotator.habit]))
    return frozenset(defects)
