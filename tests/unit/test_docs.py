from pathlib import Path

import pytest

from alignlab.docs_check import broken_links, field_docs, undocumented
from alignlab.models.adapters import AdapterGroup
from alignlab.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]


def _stage_classes():
    out = []
    for name in STAGES:
        try:
            out.append(STAGES[name])
        except (ImportError, AttributeError):  # a stage still being written
            continue
    return out


@pytest.mark.parametrize("cls", _stage_classes(), ids=lambda c: c.__name__)
def test_every_config_field_is_documented_once(cls):
    assert undocumented(cls.config_cls) == []
    assert "Example:" in (cls.__doc__ or ""), f"{cls.__name__} needs a runnable example in its docstring"


def test_field_docs_reads_several_fields_on_one_line():
    docs = field_docs(AdapterGroup)
    assert docs["r"] == "LoRA rank." and docs["alpha"] == "LoRA scaling numerator."


def test_docs_have_no_broken_links():
    assert broken_links([ROOT / "docs", ROOT / "README.md"]) == []
