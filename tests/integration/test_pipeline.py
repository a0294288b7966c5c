"""tiny base -> Pretrain -> SFT through the registry (issue 2, section 7)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.cli import main
from alignlab.registry import format_lineage

pytestmark = pytest.mark.integration


def _weights(artifact):
    return load_file(str(artifact.path / "model.safetensors"))


def test_each_stage_changed_parameters_and_published_loadable_models(tiny_pipeline):
    _, arts = tiny_pipeline
    for before, after in (("base", "pretrain"), ("pretrain", "sft")):
        w0, w1 = _weights(arts[before]), _weights(arts[after])
        changed = [k for k in w0 if not torch.equal(w0[k], w1[k])]
        assert len(changed) > len(w0) // 2, f"{after} barely changed the weights of {before}"
    for name in ("pretrain", "sft"):
        m = arts[name].metrics
        assert torch.isfinite(torch.tensor(m["train_loss_last"]))
        assert m["train_loss_last"] < m["train_loss_first"], f"{name} loss did not go down"
    model = AutoModelForCausalLM.from_pretrained(arts["sft"].path)
    tok = AutoTokenizer.from_pretrained(arts["sft"].path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_sft_beats_base_on_the_gold_score(tiny_pipeline):
    _, arts = tiny_pipeline
    base, sft = arts["base"].metrics, arts["sft"].metrics
    assert sft["gold_score"] > base["gold_score"] + 0.1, (base["gold_score"], sft["gold_score"])


def test_pretrain_records_mixture_and_perplexity(tiny_pipeline):
    _, arts = tiny_pipeline
    m = arts["pretrain"].metrics
    (share,) = m["mixture"].values()
    assert share["epochs"] == pytest.approx(1.0, abs=0.05)
    assert 1.0 < m["perplexity"] < 1024


def test_rerun_reuses_artifacts(tiny_pipeline):
    from alignlab.stages.sft import SFT

    registry, arts = tiny_pipeline
    # the resolved config stored in the artifact rebuilds the same stage: same fingerprint, no training
    again = SFT(arts["sft"].config).run(registry, model=arts["pretrain"].ref)
    assert again.id == arts["sft"].id


def test_turning_on_tracking_or_changing_the_evaluation_reuses_the_artifact(tiny_pipeline):
    from alignlab.stages.sft import SFT

    registry, arts = tiny_pipeline
    watched = {
        **arts["sft"].config,
        "tracking": {"report_to": "tensorboard", "run_name": "watched"},
        "eval": {"gold_n": 3, "max_new_tokens": 4},
        "train": {**arts["sft"].config["train"], "logging_steps": 1},
    }
    assert SFT(watched).run(registry, model=arts["pretrain"].ref).id == arts["sft"].id
    changed = {**arts["sft"].config, "train": {**arts["sft"].config["train"], "max_steps": 1}}
    retrained = SFT({**changed, "eval": {"gold": False}}).run(registry, model=arts["pretrain"].ref)
    assert retrained.id != arts["sft"].id and retrained.fingerprint != arts["sft"].fingerprint


def test_lineage_and_cli_show_json(tiny_pipeline, capsys):
    registry, arts = tiny_pipeline
    chain = [a.ref for _, a in registry.lineage(arts["sft"].ref)]
    assert chain == [arts["sft"].ref, arts["pretrain"].ref, arts["base"].ref]
    text = format_lineage(registry.lineage(arts["sft"].ref))
    assert "testbed:sft" in text and "testbed:pretrain" in text
    assert main(["artifacts", "show", arts["sft"].ref, "--json", "--registry", str(registry.root)]) == 0
    shown = json.loads(capsys.readouterr().out)
    for key in (
        "id",
        "name",
        "version",
        "kind",
        "stage",
        "path",
        "parents",
        "fingerprint",
        "metrics",
        "created_at",
    ):
        assert key in shown
    assert shown["parents"] == [arts["pretrain"].id]
