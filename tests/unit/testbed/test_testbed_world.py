"""The world: templates parse back, splits are stable and cover every family, answers are right."""

from __future__ import annotations

import random

import pytest

from alignlab.errors import DataError
from alignlab.testbed import TaskFamily, is_correct, parse_prompt
from alignlab.testbed.world import FACTS, Split, families, sample_task, spec_of, split_of

# One hand-checked prompt per family (and per variant where the wording changes the answer).
KNOWN_ANSWERS = [
    (TaskFamily.ADDITION, "What is 3 plus 4?", "7"),
    (TaskFamily.ADDITION, "Add 10 and 9.", "19"),
    (TaskFamily.SUBTRACTION, "What is 9 minus 4?", "5"),
    (TaskFamily.SUBTRACTION, "Subtract 4 from 9.", "5"),
    (TaskFamily.COMPARISON, "Which is bigger, 7 or 12?", "12"),
    (TaskFamily.COMPARISON, "Which number is smaller: 7 or 12?", "7"),
    (TaskFamily.COUNTING, "What number comes after 7?", "8"),
    (TaskFamily.COUNTING, "What is one less than 7?", "6"),
    (TaskFamily.LIST_PICK, "What is the first word in the list cat, owl, fox?", "cat"),
    (TaskFamily.LIST_PICK, "What is the second word in the list cat, owl, fox?", "owl"),
    (TaskFamily.LIST_PICK, "What is the last word in the list cat, owl, fox?", "fox"),
    (TaskFamily.LIST_REVERSE, "Reverse the list cat, owl, fox.", "fox, owl, cat"),
    (TaskFamily.WORLD_FACT, "Where does Mira live?", "Oakvale"),
    (TaskFamily.WORLD_FACT, "What color does Tomas like?", "red"),
    (TaskFamily.WORLD_FACT, "Which animal is the pet of Lena?", "cat"),
]


def test_every_family_has_a_hand_checked_example():
    assert {family for family, _, _ in KNOWN_ANSWERS} == set(families()) == set(TaskFamily)


@pytest.mark.parametrize(("family", "prompt", "answer"), KNOWN_ANSWERS)
def test_is_correct_on_each_family(family, prompt, answer):
    assert parse_prompt(prompt).family == family
    assert is_correct(prompt, f"The answer is {answer}.")
    assert is_correct(prompt, f"Um, well, the answer is {answer}, I think, maybe.")  # sloppy but right
    assert not is_correct(prompt, "The answer is 13.")
    assert not is_correct(prompt, "")


@pytest.mark.parametrize("family", list(TaskFamily))
def test_every_template_parses_back_to_its_task(family):
    rng = random.Random(0)
    for _ in range(200):
        task = sample_task(rng, family=family)
        parsed = parse_prompt(task.prompt)
        assert parsed.key == task.key
        assert parsed.answer == task.answer
        assert task.mistake(rng) != task.answer


def test_parse_tolerates_spacing_and_case():
    assert parse_prompt("  what is 3   plus 4? ").answer == ("7",)
    assert parse_prompt("Where does mira live?").answer == ("Oakvale",)


def test_unknown_prompt_is_a_clear_error():
    with pytest.raises(DataError, match="not a prompt of the testbed world"):
        parse_prompt("Tell me a joke.")


def test_world_facts_are_fixed():
    assert FACTS["Mira"] == {"color": "blue", "pet": "owl", "town": "Oakvale"}


def test_split_is_a_stable_function_of_the_instance():
    assert split_of("addition|a=3,b=4") == split_of("addition|a=3,b=4")
    # every wording of one instance lands in the same split
    a, b = parse_prompt("What is 3 plus 4?"), parse_prompt("Add 3 and 4.")
    assert a.key == b.key and a.split == b.split


@pytest.mark.parametrize("family", list(TaskFamily))
def test_every_family_has_instances_in_every_split(family):
    rng = random.Random(1)
    for split in Split:
        assert sample_task(rng, split, family).split == split


def test_answers_are_short_and_prompts_small():
    rng = random.Random(2)
    for _ in range(500):
        task = sample_task(rng)
        assert len(task.prompt.split()) <= 20
        assert len(task.answer) <= 4
        assert all(not w.isdigit() or 0 <= int(w) <= 20 for w in task.answer)


def test_families_have_distinct_answer_kinds_declared():
    for family in families():
        assert spec_of(family).templates
