"""Chinese-LLaMA's two training schedules after a vocabulary extension (issue 18 §1), on the tiny
base: ``new_rows`` moves only the new embedding rows; ``lora_embeddings`` trains a LoRA adapter
with the embeddings trained whole beside it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alignlab.registry import Registry

pytestmark = pytest.mark.integration

COMMON = {
    "data": {"seq_len": 64},
    # weight decay on: the old rows must not move even through it
    "train": {"max_steps": 3, "lr": 1e-2, "batch_size": 4, "warmup_ratio": 0.0, "weight_decay": 0.1},
    "eval": {"gold": False},
    # tokens learned from the training text itself, so the new rows get gradients
    "vocab": {"train_source": "testbed:pretrain", "train_new_tokens": 8, "max_token_chars": 12},
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from alignlab.stages.tiny_base import TinyBase

    registry = Registry(tmp_path_factory.mktemp("vocab"))
    return registry, TinyBase({"size": "test", "eval": {"gold": False}}).run(registry)


def test_new_rows_trains_only_the_new_embedding_rows(base):
    from alignlab.stages.pretrain import Pretrain

    registry, start = base
    vocab = {**COMMON["vocab"], "schedule": "new_rows"}
    art = Pretrain({**COMMON, "output": "rows", "vocab": vocab}).run(registry, model=start.ref)
    before, after = load_file(start.path / "model.safetensors"), load_file(art.path / "model.safetensors")
    first = art.metrics["vocab_first_new_id"]
    assert art.metrics["vocab_added"] >= 8 and before.keys() == after.keys()
    for name, weight in before.items():
        if name == "model.embed_tokens.weight":  # tied with the LM head in the tiny model
            assert torch.equal(after[name][:first], weight[:first]), "an old row moved"
            new = after[name][first:]
            mean = weight[:first].mean(0)
            assert (new - mean).abs().max() > 1e-4, "the new rows did not train"
        else:
            assert torch.equal(after[name], weight), f"{name} moved"


def test_lora_embeddings_trains_the_adapter_and_the_whole_embeddings(base):
    from alignlab.stages.pretrain import Pretrain

    registry, start = base
    config = {
        **COMMON,
        "output": "lora-emb",
        "vocab": {**COMMON["vocab"], "schedule": "lora_embeddings"},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "merge": False},
    }
    art = Pretrain(config).run(registry, model=start.ref)
    assert art.kind == "adapter"
    saved = load_file(art.path / "adapter_model.safetensors")
    trained = saved["base_model.model.model.embed_tokens.modules_to_save.weight"]
    original = saved["base_model.model.model.embed_tokens.original_module.weight"]
    first = art.metrics["vocab_first_new_id"]
    assert (trained[:first] - original[:first]).abs().max() > 1e-4, "the old rows are trained too"
    assert any("lora_B" in k and saved[k].abs().max() > 0 for k in saved), "the adapter did not train"
    assert not any("norm" in k for k in saved), "only LoRA and the embeddings are saved"
