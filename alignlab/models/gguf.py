"""GGUF checkpoints as a model source: converted once to a plain safetensors folder, then cached.

transformers reads GGUF (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package) and
dequantises it to an ordinary model, but a model loaded that way refuses ``save_pretrained``
("quantized with gguf"). alignlab converts each file once: the dequantised weights, the tokenizer
(with its chat template) and the generation config go into a folder of the user's cache keyed by
the file's sha256, and every later load reads that folder like any Hugging Face checkpoint.

Example:
    >>> folder = converted_folder("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained(folder)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError
from alignlab.registry.provenance import sha256_of

log = logging.getLogger("alignlab")

GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "alignlab-gguf-source.json"  # what the cached folder was converted from


def is_gguf(location: str | Path) -> bool:
    """Whether ``location`` names a GGUF file (by its extension; the magic bytes are checked on load)."""
    return str(location).lower().endswith(".gguf")


def cache_root() -> Path:
    """Where converted checkpoints live: ``$ALIGNLAB_CACHE``, else ``$XDG_CACHE_HOME/alignlab``, else
    ``~/.cache/alignlab``."""
    if os.environ.get("ALIGNLAB_CACHE"):
        return Path(os.environ["ALIGNLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "alignlab"


def check_gguf_file(path: Path) -> None:
    """A readable file that starts with the GGUF magic bytes, else a ConfigError naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r}); "
            "give a .gguf checkpoint, a model folder or a hub id"
        )


def converted_folder(path: str | Path, *, cache: Path | None = None) -> Path:
    """The cached Hugging Face folder converted from the GGUF file ``path`` (converting it if needed).

    The folder is named by the file's sha256, so a changed file is converted again and two paths
    to the same bytes share one conversion; concurrent processes convert it once (a file lock).

    Raises:
        ConfigError: not a GGUF file, the ``gguf`` package missing, or an architecture that this
            version of transformers cannot read.
    """
    from filelock import FileLock

    path = Path(path).expanduser().resolve()
    check_gguf_file(path)
    sha = sha256_of(path)
    root = (cache or cache_root()) / "gguf"
    target = root / f"{sha[:16]}-{path.stem}"
    if (target / SOURCE_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{sha[:16]}.lock")):
        if (target / SOURCE_FILE).is_file():  # another process converted it while we waited
            return target
        log.info("converting %s to safetensors (once per machine; cached in %s)", path.name, target)
        staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=root))
        try:
            _convert(path, staging)
            for item in (staging, *staging.iterdir()):  # mkdtemp makes it private; a cache is shared
                item.chmod(0o755 if item.is_dir() else 0o644)
            (staging / SOURCE_FILE).write_text(
                json.dumps({"gguf": str(path), "sha256": sha, "size": path.stat().st_size}, indent=2)
            )
            if target.exists():  # an interrupted earlier conversion
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(path: Path, out: Path) -> None:
    """Dequantise ``path`` with transformers and save a plain model, tokenizer and generation config."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path}: reading GGUF checkpoints needs the gguf package (pip install gguf)")
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ValueError as err:
        if "is not supported" not in str(err):
            raise ConfigError(f"{path}: transformers could not read this GGUF file: {err}") from err
        raise ConfigError(
            f"{path}: {err} transformers {_transformers_version()} reads GGUF checkpoints of these "
            f"architectures: {', '.join(_supported_architectures())}. Convert the model to a Hugging "
            "Face folder (safetensors) with the tools of its authors and give that folder instead."
        ) from err
    _drop_gguf_quantization(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _drop_gguf_quantization(model: Any) -> None:
    """The weights are dequantised already; forget that they came from GGUF so the model can be saved."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def _supported_architectures() -> list[str]:
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # pragma: no cover - moved in another transformers version
        return ["(see transformers' GGUF documentation)"]
    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # mapping keys, not models


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
