"""The stage contract as code: what every stage is, what it takes, and how a dry run checks it.

A stage is a class with a typed config beside it. The recipe parser, the ``alignlab stage`` CLI,
the lazy imports of ``alignlab.X``, the memory planner's stage names and the docs generator all
read the same declarations: the class's ``name``, ``config_cls`` and ``inputs``, and its entry in
:data:`alignlab.stages.STAGE_INFO`.

A new stage provides:

- ``name`` (the recipe name) and ``config_cls`` (a dataclass whose fields are documented in its
  ``Attributes:`` section);
- ``inputs``: one :class:`Input` per role, which names the artifact kinds it accepts; ``run``
  takes exactly these roles as keyword-only parameters (a test checks they agree);
- ``output_kind()``: the kind of artifact ``run`` publishes;
- ``check(registry, **inputs)``: every check that needs no training (inputs resolved and of the
  right kind, data read and validated, reward functions imported). A dry run calls it, with the
  inputs that earlier recipe entries will produce given as :class:`Planned`;
- ``run(registry, *, force=False, **inputs) -> Artifact``.

Example:
    >>> from alignlab.stages import STAGES
    >>> [i.role for i in STAGES["ppo"].inputs]
    ['model', 'reward', 'critic', 'reference']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

MODEL_KINDS = ("model", "adapter")  # a causal LM: full weights, or an adapter on its base


@dataclass(frozen=True)
class Input:
    """One input role of a stage.

    Attributes:
        role: the keyword ``run`` takes it as (``model``, ``reward``, ...).
        kinds: the artifact kinds it accepts; a local path or hub id is accepted as any of them.
        required: whether ``run`` refuses to start without it.
        doc: what it is, for the docs and the CLI's errors.
        function: a reward function (``module:function`` or a callable) is accepted too.
        several: a list of references is accepted (several rewards, combined by the stage).
    """

    role: str
    kinds: tuple[str, ...] = MODEL_KINDS
    required: bool = True
    doc: str = ""
    function: bool = False
    several: bool = False


@dataclass(frozen=True)
class Planned:
    """An input that an earlier recipe entry will produce: what a dry run knows about it."""

    entry: str
    kind: str

    @property
    def id(self) -> str:
        return f"planned:{self.entry}"

    @property
    def ref(self) -> str:
        return self.entry


@runtime_checkable
class Stage(Protocol):
    """What every stage class provides (see the module docstring)."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    inputs: ClassVar[tuple[Input, ...]]
    config: Any

    def output_kind(self) -> str: ...

    def check(self, registry: Any, **inputs: Any) -> None: ...

    def run(self, registry: Any = None, *, force: bool = False, **inputs: Any) -> Any: ...


def input_roles(stage_cls: type) -> list[str]:
    """The input roles of a stage class, in declaration order."""
    return [spec.role for spec in stage_cls.inputs]


def check_kind(stage: str, spec: Input, target: Any) -> None:
    """Refuse an artifact (or planned entry) of a kind the role does not accept, saying which it wants.

    Raises:
        ConfigError: e.g. ``sft``'s ``model`` given a reward model.
    """
    from alignlab.errors import ConfigError

    kind = getattr(target, "kind", None)
    if kind == "external":
        kind = folder_kind(target)  # a local model folder says what it is in its config.json
    if kind in (None, "external", "missing") or kind in spec.kinds:
        return
    wanted = " or ".join(spec.kinds) + (" artifact, or a reward function" if spec.function else " artifact")
    raise ConfigError(
        f"{stage}: input '{spec.role}' is {getattr(target, 'ref', target)}, a {kind} artifact; "
        f"it takes a {wanted}" + (f" ({spec.doc})" if spec.doc else "")
    )


def folder_kind(target: Any) -> str | None:
    """``model`` or ``reward_model`` for a local Hugging Face folder outside the registry, from
    the architectures its ``config.json`` names (a causal LM, or a one-label sequence
    classifier); None when it cannot tell (a hub id, a GGUF file, another architecture)."""
    import json
    from pathlib import Path

    if not getattr(target, "is_local", False):
        return None
    config = Path(target.location) / "config.json"
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    if architectures and all(a.endswith("ForSequenceClassification") for a in architectures):
        return "reward_model"
    if architectures and all(a.endswith("ForCausalLM") for a in architectures):
        return "model"
    return None
