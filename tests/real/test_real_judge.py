"""SmolLM2-135M-Instruct as a local judge: FastChat's 1-10 grading prompt through its own chat
template, its explanation generated, its rating parsed or read from its probabilities."""

from __future__ import annotations

import pytest

from alignlab.eval.grading import LocalChatJudge, grade_answers

pytestmark = pytest.mark.real


def test_smollm2_grades_answers_against_a_reference(smollm2):
    registry, art = smollm2
    judge = LocalChatJudge.load(art.ref, registry, max_new_tokens=48)
    result = grade_answers(
        judge,
        ["What is the capital of France?", "What is the capital of France?"],
        ["The capital of France is Paris.", "The capital of France is Berlin."],
        references=["Paris", "Paris"],
        relative=False,
    )
    assert result.failed == 0
    for item in result.items:
        assert 1.0 <= item["score"] <= 10.0 and item["how"] in {"parsed", "probabilities"}
        assert item["rationale"]  # it explained itself before the rating
    print("\nSmolLM2 as judge:", [(it["answer"], round(it["score"], 2), it["how"]) for it in result.items])
