"""Model shapes for the memory planner: a decoder-only transformer's sizes, from a Hugging Face
config, a local folder, a hub id the planner knows, or a bare size ("7B").

Example:
    >>> resolve_model("7B").params > 6e9
    True
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean

Linear = tuple[int, int, bool]  # (in_features, out_features, has bias)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only transformer, as far as memory is concerned.

    Attributes:
        name: what to call the model in reports.
        hidden: width of the residual stream (``hidden_size``).
        layers: transformer blocks.
        heads: attention heads. kv_heads: key/value heads (fewer than ``heads`` with GQA).
        intermediate: width of the MLP.
        vocab: vocabulary size (the logits' width).
        gated_mlp: SwiGLU-style MLP with three matrices (LLaMA, Mistral) instead of two (OPT, GPT-2).
        max_positions: the context length the model was trained for.
        embedding_params: input embeddings (tokens and learned positions); QLoRA keeps them 16-bit.
        head_params: an output layer of its own (0 when it shares the input embeddings).
        layer_linears: (in, out, bias) of each linear layer in one block.
        layer_norm_params: parameters of the norms in one block.
        extra_linears: linear layers outside the blocks (e.g. OPT-350m's projections).
        other_params: everything else (the final norm).
        token_embed_dim: width of the token embeddings when it differs from ``hidden``; None = hidden.
        params_override: the exact parameter count when the model was given as a size ("7B").
    """

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    max_positions: int
    embedding_params: int
    head_params: int
    layer_linears: tuple[Linear, ...]
    layer_norm_params: int = 0
    extra_linears: tuple[Linear, ...] = ()
    other_params: int = 0
    token_embed_dim: int | None = None
    params_override: int | None = None

    @property
    def _linears(self) -> list[Linear]:
        return list(self.layer_linears) * self.layers + list(self.extra_linears)

    @property
    def _linear_total(self) -> int:
        return sum(i * o + (o if b else 0) for i, o, b in self._linears)

    @property
    def params(self) -> int:
        """All parameters (shared embeddings counted once)."""
        if self.params_override is not None:
            return self.params_override
        return (
            self.embedding_params
            + self.head_params
            + self._linear_total
            + self.layers * self.layer_norm_params
            + self.other_params
        )

    @property
    def quantizable_params(self) -> int:
        """Weights of the linear layers bitsandbytes quantizes for QLoRA (all but the LM head)."""
        base = sum(i * o for i, o, _ in self._linears)
        if self.params_override is None:
            return base
        # a size like "7B": the part beyond the template's embeddings, norms and biases
        return self.params_override - (self._template_params - base)

    @property
    def _template_params(self) -> int:
        return replace(self, params_override=None).params

    @property
    def largest_layer(self) -> int:
        """Parameters of the largest module, as DeepSpeed's ``model_to_params`` counts them."""
        linears = [i * o + (o if b else 0) for i, o, b in self._linears]
        return max([self.vocab * self.embed_dim, self.head_params, *linears])

    @property
    def embed_dim(self) -> int:
        """Width of the token embeddings (OPT-350m embeds in 512 and projects to 1024)."""
        return self.token_embed_dim or self.hidden

    def lora_params(self, r: int) -> int:
        """Trainable parameters of rank-``r`` LoRA on every linear layer but the LM head."""
        return r * sum(i + o for i, o, _ in self._linears)

    def reward_params(self) -> int:
        """Parameters as a reward model or critic: the LM head replaced by a scalar head."""
        return self.params - self.head_params + self.hidden

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def shape_from_config(config: dict[str, Any], name: str | None = None) -> ModelShape:
    """A :class:`ModelShape` from a Hugging Face ``config.json`` mapping.

    LLaMA, Mistral, OPT and GPT-2 are counted from their formulas; any other ``model_type`` is
    built on PyTorch's meta device (no memory, no download) and measured.
    """
    kind = config.get("model_type")
    name = name or config.get("_name_or_path") or str(kind)
    if kind in ("llama", "mistral"):
        return _llama(config, name)
    if kind == "opt":
        return _opt(config, name)
    if kind == "gpt2":
        return _gpt2(config, name)
    return _measured(config, name)


def _llama(c: dict[str, Any], name: str) -> ModelShape:
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or h // heads
    bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    linears = (
        (h, heads * hd, bias),
        (h, kv * hd, bias),
        (h, kv * hd, bias),
        (heads * hd, h, bias),
        (h, f, mlp_bias),
        (h, f, mlp_bias),
        (f, h, mlp_bias),
    )
    return ModelShape(
        name=name, hidden=h, layers=c["num_hidden_layers"], heads=heads, kv_heads=kv, intermediate=f,
        vocab=v, gated_mlp=True, max_positions=c.get("max_position_embeddings", 2048),
        embedding_params=v * h, head_params=0 if c.get("tie_word_embeddings", False) else v * h,
        layer_linears=linears, layer_norm_params=2 * h, other_params=h,
    )  # fmt: skip


def _opt(c: dict[str, Any], name: str) -> ModelShape:
    h, f, v = c["hidden_size"], c["ffn_dim"], c["vocab_size"]
    wp = c.get("word_embed_proj_dim") or h
    bias = bool(c.get("enable_bias", True))
    affine = 2 if c.get("layer_norm_elementwise_affine", True) else 0
    final_norm = c.get("do_layer_norm_before", True) and not c.get("_remove_final_layer_norm", False)
    positions = c.get("max_position_embeddings", 2048)
    return ModelShape(
        name=name, hidden=h, layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
        kv_heads=c["num_attention_heads"], intermediate=f, vocab=v, gated_mlp=False, max_positions=positions,
        embedding_params=v * wp + (positions + 2) * h,  # OPT offsets learned positions by 2
        head_params=0 if c.get("tie_word_embeddings", True) else v * wp,
        layer_linears=((h, h, bias),) * 4 + ((h, f, bias), (f, h, bias)),
        layer_norm_params=2 * affine * h,
        extra_linears=((wp, h, False), (h, wp, False)) if wp != h else (),
        other_params=affine * h if final_norm else 0, token_embed_dim=wp,
    )  # fmt: skip


def _gpt2(c: dict[str, Any], name: str) -> ModelShape:
    h, v, positions = c["n_embd"], c["vocab_size"], c.get("n_positions", 1024)
    f = c.get("n_inner") or 4 * h
    return ModelShape(
        name=name, hidden=h, layers=c["n_layer"], heads=c["n_head"], kv_heads=c["n_head"], intermediate=f,
        vocab=v, gated_mlp=False, max_positions=positions, embedding_params=v * h + positions * h,
        head_params=0 if c.get("tie_word_embeddings", True) else v * h,
        layer_linears=((h, 3 * h, True), (h, h, True), (h, f, True), (f, h, True)),
        layer_norm_params=4 * h, other_params=2 * h,
    )  # fmt: skip


def _measured(c: dict[str, Any], name: str) -> ModelShape:
    """Any other architecture: build it on the meta device and count what is there."""
    try:
        import torch
        import transformers
    except ImportError as err:  # pragma: no cover - both are dependencies
        raise ConfigError(
            f"measuring a {c.get('model_type')!r} model needs torch and transformers: {err}"
        ) from err
    try:
        config = transformers.AutoConfig.for_model(**c)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"cannot build model_type {c.get('model_type')!r} from its config to count parameters ({err}); "
            "give the size instead, e.g. --model 7B"
        ) from err
    out = model.get_output_embeddings()
    seen: set[int] = set()
    embedding = head = norms = 0
    linears: list[Linear] = []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        count = sum(p.numel() for p in own)
        if module is out:
            head += count
        elif isinstance(module, torch.nn.Embedding):
            embedding += count
        elif isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            w = module.weight
            i, o = (w.shape[1], w.shape[0]) if isinstance(module, torch.nn.Linear) else tuple(w.shape)
            linears.append((int(i), int(o), getattr(module, "bias", None) is not None))
        else:
            norms += count
    tc = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = _first(tc, "hidden_size", "n_embd", "d_model")
    heads = _first(tc, "num_attention_heads", "n_head")
    return ModelShape(
        name=name, hidden=h, layers=_first(tc, "num_hidden_layers", "n_layer"), heads=heads,
        kv_heads=getattr(tc, "num_key_value_heads", None) or heads,
        intermediate=_first(tc, "intermediate_size", "ffn_dim", "n_inner", default=4 * h),
        vocab=tc.vocab_size, gated_mlp=getattr(tc, "hidden_act", "") in ("silu", "swiglu"),
        max_positions=_first(tc, "max_position_embeddings", "n_positions", default=2048),
        embedding_params=embedding, head_params=head, layer_linears=(), extra_linears=tuple(linears),
        other_params=norms, token_embed_dim=int(model.get_input_embeddings().weight.shape[1]),
    )  # fmt: skip


def _first(config: Any, *names: str, default: int | None = None) -> int:
    for n in names:
        value = getattr(config, n, None)
        if value:
            return int(value)
    if default is None:
        raise ConfigError(
            f"the model config has none of {', '.join(names)}; give the size instead, e.g. --model 7B"
        )
    return default


# Well-known shapes (hub config.json essentials), so `--model` works offline.
_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096}
_OPT = {"model_type": "opt", "vocab_size": 50272, "max_position_embeddings": 2048}
_GPT2 = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024}
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "facebook/opt-125m": {**_OPT, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                          "ffn_dim": 3072},
    "facebook/opt-350m": {**_OPT, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                          "ffn_dim": 4096, "word_embed_proj_dim": 512, "do_layer_norm_before": False},
    "facebook/opt-1.3b": {**_OPT, "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
                          "ffn_dim": 8192},
    "facebook/opt-6.7b": {**_OPT, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                          "ffn_dim": 16384},
    "meta-llama/Llama-2-7b-hf": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
    "meta-llama/Llama-2-13b-hf": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824,
                                  "num_hidden_layers": 40, "num_attention_heads": 40, "num_key_value_heads": 40},
    "meta-llama/Llama-2-70b-hf": {**_LLAMA2, "hidden_size": 8192, "intermediate_size": 28672,
                                  "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8},
    "meta-llama/Meta-Llama-3-8B": {"model_type": "llama", "vocab_size": 128256, "max_position_embeddings": 8192,
                                   "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                   "num_attention_heads": 32, "num_key_value_heads": 8},
    "mistralai/Mistral-7B-v0.1": {"model_type": "mistral", "vocab_size": 32000, "max_position_embeddings": 32768,
                                  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 8},
    "gpt2": {**_GPT2, "n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {**_GPT2, "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {**_GPT2, "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {**_GPT2, "n_embd": 1600, "n_layer": 48, "n_head": 25},
}  # fmt: skip
# shapes a bare size ("7B") borrows its width, depth and vocabulary from: the nearest by size
SIZE_TEMPLATES = (
    "facebook/opt-125m",
    "facebook/opt-350m",
    "facebook/opt-1.3b",
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-hf",
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt])\s*$", re.IGNORECASE)
_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _key(name: str) -> str:
    key = name.lower().removeprefix("hf:").split("/")[-1]
    for suffix in ("-chat-hf", "-hf", "-chat", "-instruct"):
        key = key.removesuffix(suffix)
    return key.replace("llama2", "llama-2").replace("llama3", "llama-3").replace("meta-llama-3", "llama-3")


_BY_KEY = {_key(hub_id): hub_id for hub_id in KNOWN_MODELS}


def resolve_model(spec: str | ModelShape) -> ModelShape:
    """A size ("7B", "350M"), a known hub id or short name, or a local config.json / model folder.

    Raises:
        ConfigError: nothing matches; the message lists the known names.
    """
    if isinstance(spec, ModelShape):
        return spec
    size = _SIZE.match(spec)
    if size:
        params = int(round(float(size.group(1)) * _UNITS[size.group(2).lower()]))
        if params <= 0:
            raise ConfigError(f"model size {spec!r} must be positive")
        template = min(SIZE_TEMPLATES, key=lambda t: abs(math.log(params / known_shape(t).params)))
        short = template.split("/")[-1]
        return replace(known_shape(template), name=f"{spec.strip()} ({short} shape)", params_override=params)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not a readable config.json ({err})") from err
        return shape_from_config(config, name=str(path.parent if path.name == "config.json" else path))
    key = _key(spec)
    if key in _BY_KEY:
        return known_shape(_BY_KEY[key])
    names = sorted(_BY_KEY)
    raise ConfigError(
        f"unknown model {spec!r}{did_you_mean(key, names)}: hub configs cannot be fetched here, so give a "
        f"size (7B, 350M), a local config.json or model folder, or one of: {', '.join(names)}"
    )


def known_shape(hub_id: str) -> ModelShape:
    """The built-in shape of a well-known model."""
    return shape_from_config(KNOWN_MODELS[hub_id], name=hub_id)
