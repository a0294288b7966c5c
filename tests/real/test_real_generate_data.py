"""GenerateData with SmolLM2-135M-Instruct as the teacher: imitation answers real prompts through
its chat template and publishes a dataset the SFT stage can read."""

from __future__ import annotations

import json

import pytest

from alignlab.data import load_records
from alignlab.stages.generate_data import GenerateData

pytestmark = pytest.mark.real


def test_smollm2_as_teacher_answers_prompts_into_a_dataset(smollm2, tmp_path):
    registry, art = smollm2
    prompts = tmp_path / "prompts.jsonl"
    questions = ["What is the capital of France?", "Name a fruit that is yellow."]
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    out = GenerateData(
        {
            "output": "imitated",
            "mode": "imitation",
            "data": {"source": str(prompts)},
            "sampling": {"max_new_tokens": 24},
        }
    ).run(registry, teacher=art.ref)
    assert out.kind == "dataset" and art.id in out.parents
    records = load_records(out.ref, kind="sft", registry=registry).records
    assert [r["messages"][0]["content"] for r in records] == questions
    answers = [r["messages"][-1]["content"] for r in records]
    assert all(a.strip() for a in answers)
    print("\nSmolLM2 answers:", answers)
