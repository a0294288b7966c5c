"""GGUF as a model source and bad model references: clear errors, nothing half-written.

The conversion of a real GGUF file (SmolLM2) is tested in tests/real.
"""

import logging

import pytest

from alignlab.errors import ConfigError, ReferenceNotFound
from alignlab.models import load_causal_lm, load_tokenizer
from alignlab.models.gguf import converted_folder
from alignlab.registry import Registry, package_file


def _write_gguf(path, arch):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_of_an_architecture_transformers_cannot_read_names_what_it_can(tmp_path):
    path = _write_gguf(tmp_path / "odd.gguf", "notanarch")
    with pytest.raises(ConfigError) as err:
        converted_folder(path, cache=tmp_path / "cache")
    message = str(err.value)
    assert str(path) in message and "notanarch" in message and "llama" in message
    assert "tokenizer," not in message  # the list holds architectures only
    assert not any((tmp_path / "cache" / "gguf").glob("*-odd"))  # nothing cached


def test_a_file_that_is_not_gguf_is_refused_by_its_magic_bytes(tmp_path):
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        converted_folder(fake, cache=tmp_path / "cache")


def test_a_path_that_is_not_a_model_says_what_a_model_is(tmp_path):
    registry = Registry(tmp_path / "reg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReferenceNotFound, match="holds no model"):
        load_causal_lm(str(tmp_path / "empty"), registry)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReferenceNotFound, match="not a model"):
        load_causal_lm(str(tmp_path / "notes.txt"), registry)


def test_the_cli_reports_a_bad_model_path_without_a_traceback(tmp_path, capsys):
    from alignlab.cli import main

    (tmp_path / "empty").mkdir()
    code = main(["models", "import", str(tmp_path / "empty"), "--registry", str(tmp_path / "reg")])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds no model" in err and "Traceback" not in err
    assert not (tmp_path / "reg").exists() or not list((tmp_path / "reg").glob("base"))


def test_a_tokenizer_without_a_chat_template_gets_alignlab_s_and_says_so(tmp_path, caplog):
    from alignlab.models.tokenizer import CHAT_TEMPLATE, train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a b c d e f"] * 20, vocab_size=280)
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").write_text('{"model_type": "llama"}')
    with caplog.at_level(logging.WARNING, logger="alignlab"):
        loaded = load_tokenizer(str(tmp_path / "tok"), Registry(tmp_path / "reg"))
    assert loaded.chat_template == CHAT_TEMPLATE
    assert "has no chat template" in caplog.text


def test_pkg_references_find_a_packaged_file_without_importing_the_package():
    path = package_file("pkg:alignlab/py.typed")
    assert path.is_file()
    with pytest.raises(ReferenceNotFound, match="no installed package"):
        package_file("pkg:no_such_package_xyz/model.gguf")
    with pytest.raises(ReferenceNotFound, match="has no file"):
        package_file("pkg:alignlab/missing.gguf")
    with pytest.raises(ReferenceNotFound, match="write pkg:PACKAGE/FILE"):
        package_file("pkg:alignlab")
