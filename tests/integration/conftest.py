"""Shared tiny pipeline for integration tests: base -> pretrain -> SFT built once per session.

Models are the "test" size (~0.9M parameters) built from config; nothing is downloaded.
"""

from __future__ import annotations

import pytest

from alignlab.registry import Registry

PRETRAIN = {"train": {"epochs": 2, "lr": 2e-3, "batch_size": 32}, "eval": {"gold_n": 40}}
SFT_CFG = {"train": {"epochs": 2, "lr": 1e-3, "batch_size": 32}, "eval": {"gold_n": 40}}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A registry holding base -> pretrain -> sft at test size; returns (registry, artifacts)."""
    from alignlab.stages.pretrain import Pretrain
    from alignlab.stages.sft import SFT
    from alignlab.stages.tiny_base import TinyBase

    registry = Registry(tmp_path_factory.mktemp("registry"))
    base = TinyBase({"size": "test", "eval": {"gold_n": 40}}).run(registry)
    pretrain = Pretrain(PRETRAIN).run(registry, model=base.ref)
    sft = SFT(SFT_CFG).run(registry, model=pretrain.ref)
    return registry, {"base": base, "pretrain": pretrain, "sft": sft}
