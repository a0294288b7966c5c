"""Bad input gets a clear error and publishes nothing (issue 2, section 6)."""

import json

import pytest

from alignlab.errors import ConfigError, DataError, ReferenceNotFound
from alignlab.stages.sft import SFT

pytestmark = pytest.mark.integration


def _names(registry):
    return sorted(a.ref for a in registry.list())


def _fails(registry, exc, match, *, config=None, model=None):
    before = _names(registry)
    with pytest.raises(exc, match=match):
        SFT(config or {}).run(registry, model=model)
    assert _names(registry) == before, "a failed stage must publish nothing"


def test_unknown_config_key_and_wrong_type(tiny_pipeline):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*did you mean 'lr'"):
        SFT({"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match=r"'train.batch_size': expected an integer"):
        SFT({"train": {"batch_size": "big"}})


def test_missing_file(tiny_pipeline, tmp_path):
    registry, arts = tiny_pipeline
    _fails(
        registry,
        DataError,
        r"nope\.jsonl",
        config={"data": {"source": str(tmp_path / "nope.jsonl")}},
        model=arts["pretrain"].ref,
    )


def test_malformed_jsonl_line_names_file_and_line(tiny_pipeline, tmp_path):
    registry, arts = tiny_pipeline
    path = tmp_path / "demos.jsonl"
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    path.write_text(good + "\n" + good + "\n" + '{"messages": [oops\n')
    _fails(
        registry,
        DataError,
        r"demos\.jsonl:3: not valid JSON",
        config={"data": {"source": str(path)}},
        model=arts["pretrain"].ref,
    )


def test_record_missing_required_field(tiny_pipeline, tmp_path):
    registry, arts = tiny_pipeline
    path = tmp_path / "alpaca.jsonl"
    path.write_text(
        json.dumps({"instruction": "Add 2 and 3.", "output": "5"})
        + "\n"
        + json.dumps({"instruction": "Add 1 and 1."})
        + "\n"
    )
    _fails(
        registry,
        DataError,
        r"alpaca\.jsonl:2.*output",
        config={"data": {"source": str(path)}},
        model=arts["pretrain"].ref,
    )


def test_empty_dataset(tiny_pipeline, tmp_path):
    registry, arts = tiny_pipeline
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    _fails(
        registry,
        DataError,
        r"empty|no records",
        config={"data": {"source": str(path)}},
        model=arts["pretrain"].ref,
    )


def test_unknown_reference_lists_close_matches(tiny_pipeline):
    registry, _ = tiny_pipeline
    _fails(registry, ReferenceNotFound, r"did you mean.*pretrain", model="pretrian")


def test_missing_input(tiny_pipeline):
    registry, _ = tiny_pipeline
    _fails(registry, ConfigError, r"input 'model' is required", model=None)
