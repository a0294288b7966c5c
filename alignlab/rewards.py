"""Rewards are swappable: a reward-model artifact or a plain Python callable, one interface.

Wherever a stage accepts a reward model it also accepts
``reward_fn(prompts: list[str], responses: list[str]) -> list[float]`` — as an object in Python,
or as an import path ``"package.module:function"`` in YAML (``py:`` prefix optional).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch

from alignlab.errors import ConfigError, ReferenceNotFound
from alignlab.registry import Artifact, ExternalRef, Registry

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
Prompt = str | list[dict[str, Any]]  # a plain prompt, or a chat: the messages up to the last user turn


class Scorer(Protocol):
    """Scores (prompt, response) pairs; higher is better.

    ``sees`` says what of a chat prompt the scorer reads: ``"chat"`` (every turn, as a reward
    model was trained) or ``"last_user_turn"`` (the text of the last user turn, as a reward
    function ``(prompts: list[str], responses: list[str])`` takes it).
    """

    sees: str

    def __call__(self, prompts: list[Any], responses: list[str]) -> list[float]: ...


def import_reward_fn(path: str) -> RewardFn:
    """Import ``"package.module:function"`` and check it is callable."""
    module_name, _, attr = path.removeprefix("py:").partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"reward function {path!r}: cannot import module {module_name!r}: {err} (a registry "
            "reference with a colon names a version: name:v3 or name:latest)"
        ) from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward function {path!r}: {module_name} has no callable {attr!r}")
    return fn


class FunctionScorer:
    """Wraps a user reward function; checks it returns one finite number per response."""

    sees = "last_user_turn"

    def __init__(self, fn: RewardFn, name: str = "") -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self.reads = columns_read(fn)

    def __call__(self, prompts: list[str], responses: list[str], **columns: list[Any]) -> list[float]:
        wanted = {k: v for k, v in columns.items() if self.reads is None or k in self.reads}
        missing = sorted(set(self.reads or ()) - set(columns))
        if missing:
            raise ConfigError(
                f"reward function {self.name} reads the prompt column(s) {missing}, which the prompt "
                f"records do not have (they have: {sorted(columns) or 'only prompt'})"
            )
        scores = [float(s) for s in self.fn(list(prompts), list(responses), **wanted)]
        if len(scores) != len(responses):
            raise ConfigError(
                f"reward function {self.name} returned {len(scores)} scores for {len(responses)} responses"
            )
        if not all(torch.isfinite(torch.tensor(scores))):
            raise ConfigError(f"reward function {self.name} returned a non-finite score")
        return scores


def columns_read(fn: Any) -> frozenset[str] | None:
    """The prompt-record columns (``answer``, ...) a reward function takes as keyword arguments
    beyond ``(prompts, responses)``; None when it takes ``**kwargs`` (it gets every column)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: prompts and responses only
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return frozenset(
        p.name
        for p in positional[2:] + [p for p in params if p.kind is p.KEYWORD_ONLY]
        if p.default is inspect.Parameter.empty
    )


def check_reward_signature(fn: Any, name: str) -> None:
    """Refuse a reward function that cannot be called as ``fn(prompts, responses)`` (with the
    record columns it names as keywords), before anything trains."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    reads = columns_read(fn) or frozenset()
    try:
        signature.bind(["prompt"], ["response"], **dict.fromkeys(reads, ["column"]))
    except TypeError as err:
        raise ConfigError(
            f"reward function {name} has the signature {signature}; a reward function is called as "
            f"fn(prompts: list[str], responses: list[str]) -> list[float] ({err})"
        ) from None


class RewardModelScorer:
    """Scores with a sequence-classification reward model (one scalar per chat transcript)."""

    sees = "chat"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, max_length: int = 512) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        # the score is read at the last token, so long transcripts lose their beginning, as in training
        self.tokenizer.truncation_side = "left"
        self.batch_size = batch_size
        self.max_length = max_length

    def texts(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[str]:
        """Chat transcripts as the reward model was trained on them: every prompt turn, then the
        response. A plain-string prompt is one user turn."""
        return [
            self.tokenizer.apply_chat_template(
                [*_as_messages(p), {"role": "assistant", "content": r}], tokenize=False
            )
            for p, r in zip(prompts, responses)
        ]

    @torch.inference_mode()
    def __call__(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        device = next(self.model.parameters()).device
        texts = self.texts(prompts, responses)
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            )
            out = self.model(**{k: v.to(device) for k, v in batch.items()}).logits  # (B, 1)
            scores.extend(out[:, 0].float().tolist())
        return scores


def load_reward_model(
    ref: str | Artifact | ExternalRef,
    registry: Registry | None = None,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    **model_kwargs: Any,
):
    """Load ``(model, tokenizer)`` of a reward model (AutoModelForSequenceClassification, 1 label).

    ``model_kwargs`` go to ``from_pretrained`` (e.g. a ``quantization_config`` for QLoRA).
    """
    from transformers import AutoModelForSequenceClassification

    from alignlab.models.loading import _from_pretrained, load_tokenizer, model_location, resolve

    target = resolve(ref, registry)
    tokenizer = load_tokenizer(target, registry, trust_remote_code=trust_remote_code)
    model = _from_pretrained(
        AutoModelForSequenceClassification,
        model_location(target),
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        num_labels=1,
        **model_kwargs,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_scorer(
    reward: str | RewardFn | Any, registry: Registry | None = None, *, batch_size: int = 32
) -> Scorer:
    """A scorer from a reward-model reference, an import path, or a callable."""
    if callable(reward) and not isinstance(reward, str):
        return FunctionScorer(reward)
    if not isinstance(reward, str) or not reward:
        raise ConfigError(
            f"reward must be a reward-model reference, 'module:function' or a callable, got {reward!r}"
        )
    if is_import_path(reward):
        return FunctionScorer(import_reward_fn(reward), name=reward)
    model, tok = load_reward_model(reward, registry)
    return RewardModelScorer(model, tok, batch_size=batch_size)


def is_import_path(ref: str) -> bool:
    """``py:mod:fn``, ``pkg.mod:fn`` or ``mod:fn``: a module and an identifier that is no version.

    A registry reference with a colon names a version (``name:v3``, ``name:3``, ``name:latest``),
    so ``my_rewards:score`` can only be a function in the top-level module ``my_rewards``.
    """
    if ref.startswith("py:"):
        return True
    module, sep, attr = ref.partition(":")
    is_version = attr == "latest" or re.fullmatch(r"v?\d+", attr) is not None
    return bool(sep and module) and attr.isidentifier() and not is_version and "/" not in module


# ---- the `reward` input of a stage: an artifact or a function ------------------------------------------------------


@dataclass(frozen=True)
class RewardFunctionSource:
    """A reward function as a source of the run (``Artifact.data``), like a data file: named by its
    import path and fingerprinted by its code, so editing the function invalidates reuse."""

    source: str  # "py:module:qualname"
    fingerprint: str
    records: tuple[()] = ()
    artifact: None = None


@dataclass(frozen=True)
class RewardInput:
    """A resolved ``reward`` input: exactly one of ``target`` (a reward model) or ``fn``."""

    target: Artifact | ExternalRef | None = None
    fn: RewardFn | None = None
    source: RewardFunctionSource | None = None
    label: str | None = None  # the import path as written, for logs (the source names the code)

    @property
    def id(self) -> str:
        """The reward model's artifact id, or the function's import path."""
        return self.target.id if self.target is not None else self.source.source  # type: ignore[union-attr]

    @property
    def ref(self) -> str:
        """The reward model's reference, or the function's import path (as written, when it was)."""
        if self.target is not None:
            return getattr(self.target, "ref", None) or self.target.id
        return self.label or self.source.source  # type: ignore[union-attr]

    def scorer(self, registry: Registry) -> Scorer:
        if self.fn is not None:
            return load_scorer(self.fn)
        assert self.target is not None
        return load_scorer(self.target.id if isinstance(self.target, Artifact) else self.target.ref, registry)


def function_source(fn: Callable[..., Any]) -> RewardFunctionSource:
    """Name and fingerprint of a reward function: its import path, its source code, and the state it
    carries (closure cells and defaults of a function, ``repr`` of the object of a method or of a
    callable object). A default ``repr`` holds a memory address, so an object without a ``__repr__``
    of its own is never reused across processes: safe, as its state is unknown."""
    code_of = fn.__func__ if inspect.ismethod(fn) else fn if inspect.isfunction(fn) else type(fn)
    path = f"py:{code_of.__module__}:{code_of.__qualname__}"
    try:
        code = inspect.getsource(code_of)
    except (OSError, TypeError):  # built in, or defined where the source is not on disk
        code = ""
    if inspect.isfunction(fn):
        cells = [c.cell_contents for c in fn.__closure__ or () if c.cell_contents is not fn]
        state = repr((fn.__defaults__, fn.__kwdefaults__, cells))
    else:
        state = repr(getattr(fn, "__self__", fn))
    digest = hashlib.sha256(f"{path}\n{code}\n{state}".encode()).hexdigest()[:16]
    return RewardFunctionSource(path, digest)


def resolve_reward(registry: Registry, reward: str | RewardFn | Artifact | None) -> RewardInput:
    """Resolve the ``reward`` input before anything runs: a reward-model reference, an import path
    ``"package.module:function"`` (``py:`` prefix optional) or a callable.

    Raises:
        ConfigError: no reward, an import path that does not import, or an artifact that is not a
            reward model. ReferenceNotFound: a reference the registry does not know.
    """
    if reward is None or (isinstance(reward, str) and not reward.strip()):
        raise ConfigError(
            "input 'reward' is required: pass reward=REWARD_MODEL_REF, a reward function, or "
            "'package.module:function' (e.g. reward='alignlab.testbed:gold_reward_fn')"
        )
    from alignlab.stages.contract import Planned

    if isinstance(reward, Planned):  # a dry run: a reward model an earlier recipe entry will train
        if reward.kind != "reward_model":
            raise ConfigError(
                f"reward: entry {reward.entry!r} publishes a {reward.kind}, not a reward model; pass a "
                "reward_model entry or a reward function"
            )
        return RewardInput(target=reward)
    label = None  # an import path names the reward in logs as the user wrote it (an object has no name)
    if isinstance(reward, str) and is_import_path(reward):
        label = "py:" + reward.removeprefix("py:")
        reward = import_reward_fn(reward)
    if callable(reward) and not isinstance(reward, (str, Artifact)):
        source = function_source(reward)
        check_reward_signature(reward, label or source.source)
        return RewardInput(fn=reward, source=source, label=label)
    try:
        target = registry.resolve(reward)
    except ReferenceNotFound as err:
        raise ReferenceNotFound(
            f"reward: {err} (a reward function is given as 'package.module:function')"
        ) from err
    if isinstance(target, Artifact) and target.kind != "reward_model":
        raise ConfigError(
            f"reward: {target.ref} is a {target.kind} artifact, not a reward model; pass a "
            "reward_model artifact (stage reward_model) or a reward function"
        )
    return RewardInput(target=target)


def prompt_text(prompt: Prompt) -> str:
    """What a reward function sees of a prompt: a string as is, a chat as its last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def score_chats(
    scorer: Scorer,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    columns: Mapping[str, list[Any]] | None = None,
) -> list[float]:
    """Score responses to (chat) prompts with any scorer.

    What the scorer gets is what it declares it sees (``Scorer.sees``): a reward model reads the
    whole chat, every turn, as it was trained on it; a reward function
    (``(prompts: list[str], responses: list[str])``) gets each chat's last user turn, as does any
    scorer that declares nothing. ``columns`` (the prompt records' other fields, one list each,
    such as ``answer``) go to the scorers that take keyword arguments.
    """
    extra = dict(columns or {})
    takes = isinstance(scorer, (FunctionScorer, CombinedScorer))
    if getattr(scorer, "sees", "last_user_turn") == "chat":
        return list(
            scorer(list(prompts), list(responses), **extra)
            if takes
            else scorer(list(prompts), list(responses))
        )
    texts = [prompt_text(p) for p in prompts]
    return list(scorer(texts, list(responses), **extra) if takes else scorer(texts, list(responses)))


class CombineRule(StrEnum):
    """How several rewards become one score."""

    SUM = "sum"  # the weighted sum (reward_weights)
    SAFETY_FIRST = "safety_first"  # LLaMA-2's piecewise rule (SafetyFirstSettings)


@dataclass
class SafetyFirstSettings:
    """LLaMA-2's rule for a helpfulness and a safety reward model (Touvron et al. 2023,
    "Llama 2", §3.2.2, eq. 4): the safety score where the prompt is a safety prompt or the
    response looks unsafe (its safety score, through a sigmoid, is below ``threshold``), the
    helpfulness score everywhere else.

    Attributes:
        reward: which of the rewards is the safety one, counted from 1 in the order given (the
            other is helpfulness); LLaMA-2 lists helpfulness first, so 2.
        threshold: 0.15, LLaMA-2's value, on ``sigmoid(safety score)``: a reward model's raw
            score is a logit. With ``scale: raw`` it is compared with the score itself (for a
            reward function that already returns a probability).
        scale: sigmoid | raw — what ``threshold`` is compared with.
        prompt_column: a field of the prompt records that is true for safety prompts (LLaMA-2's
            IS_SAFETY(p)); None = none are marked, the threshold alone decides.
    """

    reward: int = 2
    threshold: float = 0.15
    scale: str = "sigmoid"
    prompt_column: str | None = None

    def __post_init__(self) -> None:
        if self.scale not in ("sigmoid", "raw"):
            raise ConfigError(f"safety.scale: {self.scale!r} is not one of sigmoid, raw")
        if isinstance(self.reward, bool) or not isinstance(self.reward, int) or self.reward < 1:
            raise ConfigError(
                f"safety.reward: {self.reward!r} is not a position (1, 2, ...) in the reward list"
            )


def check_combination(
    names: Sequence[str],
    weights: Sequence[float] | None,
    rule: CombineRule | str = CombineRule.SUM,
    safety: SafetyFirstSettings | None = None,
) -> CombineRule:
    """Refuse weights or a rule that do not fit the rewards given, before anything loads."""
    try:
        rule = CombineRule(rule)
    except ValueError:
        raise ConfigError(
            f"reward_rule: {rule!r} is not one of {', '.join(r.value for r in CombineRule)}"
        ) from None
    listed = ", ".join(map(str, names))
    if weights is not None and len(weights) != len(names):
        raise ConfigError(f"reward_weights has {len(weights)} weights for {len(names)} rewards ({listed})")
    if rule == CombineRule.SAFETY_FIRST:
        safety = safety or SafetyFirstSettings()
        if len(names) != 2:
            raise ConfigError(
                f"reward_rule=safety_first combines a helpfulness and a safety reward; got "
                f"{len(names)} reward(s) ({listed})"
            )
        if safety.reward > 2:
            raise ConfigError(f"safety.reward={safety.reward}: there are 2 rewards ({listed})")
        if weights is not None:
            raise ConfigError(
                "reward_weights apply to reward_rule=sum; safety_first picks one score per response"
            )
    return rule


class CombinedScorer:
    """Several scorers as one (each reads what it sees): the weighted sum of their scores, or
    LLaMA-2's safety-first rule (:class:`SafetyFirstSettings`).

    The last call's mean score of each part stays in ``last_means`` (for the step's log; with
    safety_first also ``safety_share``, the share of responses scored by the safety reward), and
    the means over every call since :meth:`reset` in :meth:`means`.

    Args:
        parts: (name, scorer) pairs; ``weights`` one per part (None = all 1).
        rule: sum | safety_first.
        safety: the safety-first settings (which part is safety, the threshold).
    """

    sees = "chat"

    def __init__(
        self,
        parts: Sequence[tuple[str, Scorer]],
        weights: Sequence[float] | None = None,
        rule: CombineRule | str = CombineRule.SUM,
        safety: SafetyFirstSettings | None = None,
    ) -> None:
        self.rule = check_combination([n for n, _ in parts], weights, rule, safety)
        self.parts = list(parts)
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(parts)
        self.safety = safety or SafetyFirstSettings()
        self.last_means: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        """Start the running means (:meth:`means`) afresh."""
        self._sums: dict[str, float] = {}
        self._count = 0

    def means(self) -> dict[str, float]:
        """The mean of each part's scores (and ``safety_share``) over every call since :meth:`reset`."""
        return {k: v / max(1, self._count) for k, v in self._sums.items()}

    def __call__(self, prompts: list[Any], responses: list[str], **columns: list[Any]) -> list[float]:
        scored = [(name, score_chats(scorer, prompts, responses, columns)) for name, scorer in self.parts]
        if self.rule == CombineRule.SUM:
            total = [sum(w * s[i] for w, (_, s) in zip(self.weights, scored)) for i in range(len(responses))]
            used: list[float] | None = None
        else:
            total, used = self._safety_first([s for _, s in scored], columns, len(responses))
        self.last_means = {name: sum(s) / max(1, len(s)) for name, s in scored}
        if used is not None:
            self.last_means["safety_share"] = sum(used) / max(1, len(used))
        n = len(responses)
        for key, mean in self.last_means.items():
            self._sums[key] = self._sums.get(key, 0.0) + mean * n
        self._count += n
        return total

    def _safety_first(
        self, scores: list[list[float]], columns: Mapping[str, list[Any]], n: int
    ) -> tuple[list[float], list[float]]:
        s = self.safety
        safety, helpful = scores[s.reward - 1], scores[2 - s.reward]
        column = s.prompt_column
        if column is not None and column not in columns:
            raise ConfigError(
                f"safety.prompt_column={column!r}: the prompt records have no such field (they have: "
                f"{sorted(columns) or 'only prompt'})"
            )
        marked = [bool(v) for v in columns[column]] if column is not None else [False] * n
        seen = torch.tensor(safety, dtype=torch.float64)
        if s.scale == "sigmoid":
            seen = torch.sigmoid(seen)
        unsafe = (seen < s.threshold).tolist()
        used = [float(m or u) for m, u in zip(marked, unsafe)]
        return [sa if u else h for sa, h, u in zip(safety, helpful, used)], used


# ---- verifiable rewards: (prompts, responses, answer) -> scores -----------------------------------------------------

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"(?:####|\banswer\s+is\b:?)\s*(.+)", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def extract_answer(response: str) -> str:
    """The final answer of a response: the last ``\\boxed{...}``, else what follows ``####`` or
    "the answer is", else the whole response; cut at the first line end, stripped of spaces and
    a closing period."""
    boxed = _BOXED.findall(response)
    if boxed:
        return boxed[-1].strip()
    found = _ANSWER_IS.search(response)
    text = found.group(1) if found else response
    return text.strip().split("\n", 1)[0].strip().rstrip(".").strip()


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def exact_match(prompts: list[str], responses: list[str], answer: list[Any]) -> list[float]:
    """1.0 where the response's final answer (:func:`extract_answer`) equals the record's
    ``answer`` column, case, punctuation and spacing aside; else 0.0."""
    return [float(_normalise(extract_answer(r)) == _normalise(str(a))) for r, a in zip(responses, answer)]


def numeric_match(prompts: list[str], responses: list[str], answer: list[Any]) -> list[float]:
    """1.0 where the last number of the response's final answer equals the ``answer`` column's
    number (within 1e-6; thousands separators allowed); else 0.0."""
    scores = []
    for response, expected in zip(responses, answer):
        found = _NUMBER.findall(extract_answer(response))
        want = _NUMBER.findall(str(expected))
        ok = (
            bool(found and want)
            and abs(float(found[-1].replace(",", "")) - float(want[-1].replace(",", ""))) < 1e-6
        )
        scores.append(float(ok))
    return scores


@dataclass(frozen=True)
class RegexFormat:
    """1.0 for responses that match ``pattern`` (``re.search``, or the whole response with
    ``full``), else 0.0: a format reward (DeepSeek-R1's ``<think>...</think>`` check is one)."""

    pattern: str
    full: bool = False

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        rx = re.compile(self.pattern, re.DOTALL)
        match = rx.fullmatch if self.full else rx.search
        return [float(match(r.strip()) is not None) for r in responses]


@dataclass(frozen=True)
class LengthPenalty:
    """0 up to ``target_words`` words, then ``-(words - target) / target``, down to -1."""

    target_words: int = 50

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        t = max(1, self.target_words)
        return [max(-1.0, min(0.0, (t - len(r.split())) / t)) for r in responses]


answer_format = RegexFormat(r"(?i)\banswer\s+is\b")  # "... the answer is X."
think_answer_format = RegexFormat(r"<think>.*?</think>\s*<answer>.*?</answer>", full=True)  # DeepSeek-R1
length_penalty = LengthPenalty()
