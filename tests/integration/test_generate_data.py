"""Imitation data from the tiny SFT model as teacher, consumed by SFT by reference: the generated
dataset is an artifact in the lineage between the teacher and the student."""

from __future__ import annotations

import pytest

from alignlab.stages.generate_data import GenerateData
from alignlab.stages.sft import SFT

pytestmark = pytest.mark.integration


def test_a_teachers_answers_become_a_dataset_the_sft_stage_trains_on(tiny_pipeline):
    registry, arts = tiny_pipeline
    teacher = arts["sft"]
    data = GenerateData(
        {
            "output": "imitated",
            "mode": "imitation",
            "data": {"source": "testbed:prompts", "limit": 24},
            "sampling": {"max_new_tokens": 24, "batch_size": 24},
        }
    ).run(registry, teacher=teacher.ref)
    assert data.kind == "dataset" and teacher.id in data.parents
    assert data.metrics["requests"] == 24 and 0 < data.metrics["records"] <= 24
    student = SFT(
        {
            "output": "student",
            "data": {"source": data.ref},
            "train": {"max_steps": 2, "batch_size": 8},
            "eval": {"gold": False},
        }
    ).run(registry, model=arts["base"].ref)
    assert data.id in student.parents  # base -> student, with the generated data as a parent too
    lineage = {node.id for _, node in registry.lineage(student)}
    assert teacher.id in lineage  # the teacher shows up upstream of the student
