"""Load models from any reference: a registry artifact, an adapter artifact, a path or a hub id.

Weights load from safetensors only, and `trust_remote_code` stays off unless the caller turns it on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignlab.errors import ConfigError, ReferenceNotFound

if TYPE_CHECKING:
    from alignlab.registry import Artifact, ExternalRef, Registry

log = logging.getLogger(__name__)


def resolve(ref: str | Artifact | ExternalRef, registry: Registry | None = None) -> Artifact | ExternalRef:
    """Resolve a reference with ``registry`` (the default registry when None)."""
    from alignlab.registry import Artifact, ExternalRef, Registry

    if isinstance(ref, (Artifact, ExternalRef)):
        return ref
    return (registry or Registry()).resolve(ref)


def model_location(target: Artifact | ExternalRef) -> str:
    """What to hand to ``from_pretrained``: the artifact folder, a local folder or a hub id.

    A GGUF file is converted once to a safetensors folder in the user's cache
    (:func:`alignlab.models.gguf.converted_folder`), and that folder is returned.

    Raises:
        ReferenceNotFound: a local path that holds no model.
    """
    if hasattr(target, "path"):
        check_weights(target)
        return str(target.path)
    if not target.is_local:
        return target.location
    from alignlab.models.gguf import converted_folder, is_gguf

    check_local_model(target)
    location = Path(target.location)
    return str(converted_folder(location)) if is_gguf(location) else str(location)


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def check_weights(art: Artifact) -> None:
    """Refuse an artifact whose weight files (``*.safetensors``) differ from the checksums in its
    record: tampered, truncated or half-copied weights are never loaded. Each file is hashed once
    per process (again only if its size or mtime changes). ``ALIGNLAB_VERIFY_WEIGHTS=0`` skips it.

    Raises:
        RegistryError: naming the file, with what to run.
    """
    import os

    from alignlab.errors import RegistryError
    from alignlab.registry import sha256_of

    if os.environ.get("ALIGNLAB_VERIFY_WEIGHTS", "1") == "0":
        return
    for rel, expected in getattr(art, "files", {}).items():
        if not rel.endswith(".safetensors"):
            continue
        path = art.path / rel
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise RegistryError(
                f"{art.ref}: {rel} is missing; run `alignlab artifacts verify {art.ref}`"
            ) from None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        actual = _VERIFIED.get(key) or sha256_of(path)
        if actual != expected:
            raise RegistryError(
                f"{art.ref}: {rel} does not match the checksum recorded when it was published "
                f"(changed or damaged since); run `alignlab artifacts verify {art.ref}`"
            )
        _VERIFIED[key] = actual


def check_local_model(target: ExternalRef) -> None:
    """A local model reference is a model folder or a GGUF file; anything else is refused here,
    before any work, with what a model is.

    Raises:
        ReferenceNotFound: a file that is not GGUF, or a folder without ``config.json``.
        ConfigError: a ``.gguf`` file that is not GGUF.
    """
    from alignlab.models.gguf import check_gguf_file, is_gguf

    location = Path(target.location)
    if is_gguf(location):
        check_gguf_file(location)
    elif location.is_file():
        raise ReferenceNotFound(
            f"{target.ref!r} is a file ({location}), not a model: give a model folder (config.json and "
            "*.safetensors), a .gguf checkpoint, a registry reference or a hub id"
        )
    elif not (location / "config.json").is_file() and not (location / "adapter_config.json").is_file():
        raise ReferenceNotFound(
            f"{target.ref!r}: {location} holds no model (no config.json); a model folder is what "
            "save_pretrained writes (config.json and *.safetensors), or give a .gguf checkpoint"
        )


def _from_pretrained(
    auto_cls: Any, location: str, *, trust_remote_code: bool, dtype: Any = None, **kwargs: Any
) -> Any:
    try:
        return auto_cls.from_pretrained(
            location, trust_remote_code=trust_remote_code, use_safetensors=True, dtype=dtype, **kwargs
        )
    except OSError as err:
        raise ReferenceNotFound(
            f"could not load a model from {location!r}: {err}. A hub id needs network access or a "
            "local cache (HF_HUB_OFFLINE=1 is set by default; HF_HUB_OFFLINE=0 allows downloads); "
            "weights must be in safetensors format."
        ) from err
    except Exception as err:
        if "safetensor" not in type(err).__name__.lower() and "safetensor" not in str(err).lower():
            raise
        raise ReferenceNotFound(
            f"could not load a model from {location!r}: a damaged safetensors file ({err}); if it is "
            "an artifact, run `alignlab artifacts verify`"
        ) from None


def load_tokenizer(
    ref: str | Artifact | ExternalRef, registry: Registry | None = None, *, trust_remote_code: bool = False
):
    """The tokenizer stored beside a model (for an adapter: beside the adapter, else its base)."""
    from transformers import AutoTokenizer

    from alignlab.models.tokenizer import ensure_chat_ready

    target = resolve(ref, registry)
    location = model_location(target)
    if getattr(target, "kind", None) == "adapter" and not (Path(location) / "tokenizer_config.json").exists():
        return load_tokenizer(_adapter_base(target, registry), registry, trust_remote_code=trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ReferenceNotFound(f"could not load a tokenizer from {location!r}: {err}") from err
    ensure_chat_ready(tok)
    return tok


def _adapter_base(target: Artifact, registry: Registry | None) -> str:
    base = target.inputs.get("model") or (target.parents[0] if target.parents else None)
    if base is None:
        raise ConfigError(f"adapter artifact {target.ref} records no base model")
    return base if not base.startswith(("hf:", "path:")) else base.split(":", 1)[1]


def load_causal_lm(
    ref: str | Artifact | ExternalRef,
    registry: Registry | None = None,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    merge_adapter: bool = False,
    **model_kwargs: Any,
):
    """Load ``(model, tokenizer)`` for a causal LM reference.

    An adapter artifact is composed with its base (its parent, merged when it is an adapter
    itself); ``merge_adapter`` folds it in.
    ``model_kwargs`` go to ``from_pretrained`` (e.g. a ``quantization_config`` for QLoRA).

    Example:
        >>> model, tok = load_causal_lm("sft")            # doctest: +SKIP
        >>> model, tok = load_causal_lm("./my-checkpoint")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM

    from alignlab.distributed.runtime import doing

    target = resolve(ref, registry)
    doing(f"loading {getattr(target, 'ref', target)}")
    tokenizer = load_tokenizer(target, registry, trust_remote_code=trust_remote_code)
    if getattr(target, "kind", None) == "adapter":
        from peft import PeftModel

        # an adapter trained on an adapter artifact was trained on that artifact merged (the stages
        # fold an adapter input into its base before training), so its base loads merged
        base, _ = load_causal_lm(
            _adapter_base(target, registry),
            registry,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            merge_adapter=True,
            **model_kwargs,
        )
        model = PeftModel.from_pretrained(base, str(target.path))
        if merge_adapter:
            model = model.merge_and_unload()
        return model, tokenizer
    model = _from_pretrained(
        AutoModelForCausalLM,
        model_location(target),
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        **model_kwargs,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_model(model: Any, tokenizer: Any, out_dir: str | Path) -> None:
    """Save a model (safetensors) and its tokenizer in Hugging Face format."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
