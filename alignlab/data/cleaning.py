"""The cleaning pipeline: configurable steps that stream records and report what they did.

A step is anything with a ``name``, a :class:`StepReport` and ``apply(records) -> iterator``
(:class:`CleaningStep`). Steps are chained lazily, so records stream from the reader through
every step to the writer; only what a step must remember (dedup hashes, the LSH index) stays in
memory. Each step counts the records it removed or changed, by reason, with a few examples.

The text of a record, for matching and filtering, is the concatenation of its string fields
(for messages: all contents); roles, names, ids, tool calls and margins are not text.

Example:
    >>> config = CleaningConfig(steps=["normalize", "exact_dedup", "pii"])
    >>> pipeline = Pipeline(build_steps(config))
    >>> records = [{"text": "Mail me: a@b.io"}, {"text": "mail ME:  a@b.io "}, {"text": "Hi\\u00a0there"}]
    >>> list(pipeline.run(records))
    [{'text': 'Mail me: <EMAIL>'}, {'text': 'Hi there'}]
    >>> [(r.name, r.removed, r.changed) for r in pipeline.reports]
    [('normalize', 0, 2), ('exact_dedup', 1, 0), ('pii', 0, 1)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from alignlab.data.dedup import (
    ExactDedup,
    ExactDedupSettings,
    NearDedup,
    NearDedupSettings,
    Normalizer,
    NormalizeSettings,
    SemanticDedup,
    SemanticDedupSettings,
)
from alignlab.data.filters import (
    BlocklistFilter,
    BlocklistSettings,
    InjectionFilter,
    InjectionSettings,
    LengthFilter,
    LengthSettings,
    ScriptFilter,
    ScriptSettings,
)
from alignlab.data.judge import JudgeFilter, JudgeSettings
from alignlab.data.pii import PIIScrubber, PIISettings
from alignlab.data.validation import StrEnum
from alignlab.data.web import HtmlSettings, HtmlStripper, RepetitionFilter, RepetitionSettings
from alignlab.errors import ConfigError, did_you_mean

Record = dict[str, Any]
Verdict = tuple[str, str] | None  # None: keep; (reason, detail): drop
EXAMPLE_CHARS = 160

# ---- the text of a record -----------------------------------------------------------------------

NOT_TEXT = frozenset(
    {"role", "name", "id", "tool_call_id", "type", "tool_calls", "tools", "margin", "rating"}
)


def record_texts(record: Any) -> list[str]:
    """The string fields of a record, in order (message contents, chosen, rejected, responses, text)."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key not in NOT_TEXT:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(record)
    return out


def record_text(record: Any) -> str:
    """The text of a record: its string fields joined by newlines."""
    return "\n".join(record_texts(record))


def map_texts(record: Record, fn: Callable[[str], str]) -> Record:
    """A copy of ``record`` with ``fn`` applied to every string field that :func:`record_texts` reads."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return fn(value)
        if isinstance(value, dict):
            return {k: (v if k in NOT_TEXT else walk(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(record)


# ---- steps and their reports --------------------------------------------------------------------


class StepName(StrEnum):
    """The built-in cleaning steps."""

    NORMALIZE = "normalize"
    STRIP_HTML = "strip_html"
    EXACT_DEDUP = "exact_dedup"
    NEAR_DEDUP = "near_dedup"
    SEMANTIC_DEDUP = "semantic_dedup"
    PII = "pii"
    LENGTH = "length"
    SCRIPT = "script"
    BLOCKLIST = "blocklist"
    INJECTION = "injection"
    REPETITION = "repetition"
    JUDGE = "judge"


def _clip(text: str, width: int = EXAMPLE_CHARS) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def _around_change(before: str, after: str, width: int = 70) -> tuple[str, str]:
    """The two texts from a little before their first difference."""
    i = next((k for k, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    start = max(0, i - 20)
    lead = "…" if start else ""
    return lead + _clip(before[start:], width), lead + _clip(after[start:], width)


@dataclass
class StepReport:
    """What one step did.

    Attributes:
        name: the step.
        seen: records that entered the step.
        removed: records it dropped.
        changed: records it modified.
        reasons: reason -> count: records removed for it, or for changes the occurrences
            (e.g. PII replacements by type).
        examples: reason -> up to ``max_examples`` examples (text snippets; for PII only the
            scrubbed text, never the personal data).
        stats: step-specific numbers (e.g. the judge's mean score).
        seconds: wall time spent in this step alone.
        cpu_seconds: CPU time of this step alone (what it costs on a machine shared with others).
        max_examples: examples kept per reason.
    """

    name: str
    seen: int = 0
    removed: int = 0
    changed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    max_examples: int = 3

    @property
    def kept(self) -> int:
        return self.seen - self.removed

    def _example(self, reason: str, text: str) -> None:
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(text)

    def remove(self, reason: str, text: str, detail: str = "") -> None:
        """Count a dropped record."""
        self.removed += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self._example(reason, repr(_clip(text)) + (f" ({detail})" if detail else ""))

    def change(self, counts: dict[str, int], before: str, after: str, *, show_before: bool = True) -> None:
        """Count a modified record; ``counts`` is reason -> occurrences in it."""
        self.changed += 1
        for reason, n in counts.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
            if show_before:
                old, new = _around_change(before, after)
                self._example(reason, f"{old!r} -> {new!r}")
            else:
                self._example(reason, f"-> {_clip(after)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seen": self.seen,
            "removed": self.removed,
            "changed": self.changed,
            "kept": self.kept,
            "reasons": dict(self.reasons),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "stats": dict(self.stats),
            "seconds": round(self.seconds, 4),
            "cpu_seconds": round(self.cpu_seconds, 4),
        }


@runtime_checkable
class CleaningStep(Protocol):
    """One step of the pipeline. ``apply`` may be called several times (once per source); a
    step keeps its state (seen hashes ...) and its report across calls."""

    name: str
    report: StepReport

    def apply(self, records: Iterable[Record]) -> Iterator[Record]: ...


class FilterStep:
    """A step that drops records: ``check(text)`` returns None to keep or ``(reason, detail)``."""

    def __init__(self, name: str, check: Callable[[str], Verdict], *, max_examples: int = 3) -> None:
        self.name, self.check = str(name), check
        self.report = StepReport(self.name, max_examples=max_examples)

    def apply(self, records: Iterable[Record]) -> Iterator[Record]:
        report, check = self.report, self.check
        for record in records:
            report.seen += 1
            text = record_text(record)
            verdict = check(text)
            if verdict is None:
                yield record
            else:
                report.remove(verdict[0], text, verdict[1])


class BatchFilterStep:
    """A filter that needs batches (a model's forward pass): ``check_batch(records) -> verdicts``."""

    def __init__(
        self,
        name: str,
        check_batch: Callable[[list[Record]], list[Verdict]],
        batch_size: int,
        *,
        stats: Callable[[], dict[str, Any]] | None = None,
        max_examples: int = 3,
    ) -> None:
        self.name, self.check_batch, self.batch_size = str(name), check_batch, max(1, batch_size)
        self._stats = stats
        self.report = StepReport(self.name, max_examples=max_examples)

    def _flush(self, batch: list[Record]) -> Iterator[Record]:
        for record, verdict in zip(batch, self.check_batch(batch)):
            if verdict is None:
                yield record
            else:
                self.report.remove(verdict[0], record_text(record), verdict[1])
        if self._stats is not None:
            self.report.stats.update(self._stats())

    def apply(self, records: Iterable[Record]) -> Iterator[Record]:
        batch: list[Record] = []
        for record in records:
            self.report.seen += 1
            batch.append(record)
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        if batch:
            yield from self._flush(batch)


class MapStep:
    """A step that rewrites text fields: ``transform(text) -> (new_text, {reason: occurrences})``."""

    def __init__(
        self,
        name: str,
        transform: Callable[[str], tuple[str, dict[str, int]]],
        *,
        show_before: bool = True,
        max_examples: int = 3,
    ) -> None:
        self.name, self.transform, self.show_before = str(name), transform, show_before
        self.report = StepReport(self.name, max_examples=max_examples)

    def rewrite(self, record: Record) -> tuple[Record, dict[str, int]]:
        """The record with every text field transformed, and the reasons it changed."""
        counts: dict[str, int] = {}

        def transform(text: str) -> str:
            new, found = self.transform(text)
            for reason, n in found.items():
                counts[reason] = counts.get(reason, 0) + n
            return new

        return map_texts(record, transform), counts

    def apply(self, records: Iterable[Record]) -> Iterator[Record]:
        report = self.report
        for record in records:
            report.seen += 1
            new_record, counts = self.rewrite(record)
            if counts:
                report.change(
                    counts, record_text(record), record_text(new_record), show_before=self.show_before
                )
                yield new_record
            else:
                yield record


# ---- the config and the step registry -----------------------------------------------------------

StepBuilder = Callable[["CleaningConfig", Any], CleaningStep]  # (config, registry) -> step
STEPS: dict[str, StepBuilder] = {}

DEFAULT_STEPS = ["normalize", "exact_dedup", "near_dedup", "pii", "length", "injection"]


def register_step(name: str, builder: StepBuilder) -> None:
    """Make ``name`` usable in ``CleaningConfig.steps``; ``builder(config, registry)`` makes the step.

    A builder for a step of your own can read its settings from ``config.options[name]``.

    Raises:
        ValueError: a step with this name is already registered.
    """
    if name in STEPS:
        raise ValueError(f"cleaning step {name!r} is already registered; pick another name")
    STEPS[name] = builder


@dataclass
class CleaningConfig:
    """Which cleaning steps run, in which order, and the settings of each.

    Attributes:
        steps: the steps, in the order they run: normalize, strip_html, exact_dedup, near_dedup,
            semantic_dedup, pii, length, script, blocklist, injection, repetition, judge, or a step
            added with register_step. Each may appear once. For web text put strip_html before the
            dedup steps and leave markup out of injection.kinds.
        normalize: settings of the normalize step.
        strip_html: settings of the strip_html step.
        exact_dedup: settings of the exact_dedup step.
        near_dedup: settings of the near_dedup step.
        semantic_dedup: settings of the semantic_dedup step.
        pii: settings of the pii step.
        length: settings of the length step.
        script: settings of the script step.
        blocklist: settings of the blocklist step.
        injection: settings of the injection step.
        repetition: settings of the repetition step.
        judge: settings of the judge step.
        examples: examples kept per reason in each step's report.
        options: settings of steps added with register_step, by step name (read by their builders).
    """

    steps: list[str] = field(default_factory=lambda: list(DEFAULT_STEPS))
    normalize: NormalizeSettings = field(default_factory=NormalizeSettings)
    strip_html: HtmlSettings = field(default_factory=HtmlSettings)
    exact_dedup: ExactDedupSettings = field(default_factory=ExactDedupSettings)
    near_dedup: NearDedupSettings = field(default_factory=NearDedupSettings)
    semantic_dedup: SemanticDedupSettings = field(default_factory=SemanticDedupSettings)
    pii: PIISettings = field(default_factory=PIISettings)
    length: LengthSettings = field(default_factory=LengthSettings)
    script: ScriptSettings = field(default_factory=ScriptSettings)
    blocklist: BlocklistSettings = field(default_factory=BlocklistSettings)
    injection: InjectionSettings = field(default_factory=InjectionSettings)
    repetition: RepetitionSettings = field(default_factory=RepetitionSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    examples: int = 3
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, name in enumerate(self.steps):
            if name not in STEPS:
                raise ConfigError(
                    f"cleaning.steps[{i}]: unknown step {name!r}{did_you_mean(str(name), STEPS)}; "
                    f"known steps: {', '.join(STEPS)}"
                )
            if name in seen:
                raise ConfigError(f"cleaning.steps[{i}]: step {name!r} is listed twice")
            seen.add(name)
        if StepName.SEMANTIC_DEDUP in seen and not self.semantic_dedup.model:
            raise ConfigError(
                "cleaning.semantic_dedup.model: the semantic_dedup step needs the local folder of a "
                "sentence-embedding model"
            )
        if StepName.JUDGE in seen and not self.judge.model:
            raise ConfigError(
                "cleaning.judge.model: the judge step needs a model reference (e.g. sft:v2 or a path)"
            )
        if StepName.BLOCKLIST in seen and not (self.blocklist.terms or self.blocklist.file):
            raise ConfigError("cleaning.blocklist: the blocklist step needs terms or a file of terms")


def _builtin_steps() -> None:
    def filters(name: str, make: Callable[[CleaningConfig], Callable[[str], Verdict]]) -> StepBuilder:
        return lambda config, registry: FilterStep(name, make(config), max_examples=config.examples)

    def semantic(config: CleaningConfig, registry: Any) -> CleaningStep:
        dedup = SemanticDedup(config.semantic_dedup)
        check = lambda records: dedup.check_batch([record_text(r) for r in records])  # noqa: E731
        size = config.semantic_dedup.batch_size
        return BatchFilterStep(StepName.SEMANTIC_DEDUP, check, size, max_examples=config.examples)

    def judge(config: CleaningConfig, registry: Any) -> CleaningStep:
        check = JudgeFilter(config.judge, registry=registry)
        size = config.judge.batch_size
        stats = lambda: check.stats  # noqa: E731
        return BatchFilterStep(
            StepName.JUDGE, check.check_batch, size, stats=stats, max_examples=config.examples
        )

    def normalize(config: CleaningConfig, registry: Any) -> CleaningStep:
        return MapStep(StepName.NORMALIZE, Normalizer(config.normalize), max_examples=config.examples)

    def pii(config: CleaningConfig, registry: Any) -> CleaningStep:
        scrub = PIIScrubber(config.pii)
        return MapStep(StepName.PII, scrub, show_before=False, max_examples=config.examples)

    def strip_html(config: CleaningConfig, registry: Any) -> CleaningStep:
        return MapStep(StepName.STRIP_HTML, HtmlStripper(config.strip_html), max_examples=config.examples)

    for name, builder in {
        StepName.NORMALIZE: normalize,
        StepName.STRIP_HTML: strip_html,
        StepName.EXACT_DEDUP: filters(StepName.EXACT_DEDUP, lambda c: ExactDedup(c.exact_dedup).check),
        StepName.NEAR_DEDUP: filters(StepName.NEAR_DEDUP, lambda c: NearDedup(c.near_dedup).check),
        StepName.SEMANTIC_DEDUP: semantic,
        StepName.PII: pii,
        StepName.LENGTH: filters(StepName.LENGTH, lambda c: LengthFilter(c.length)),
        StepName.SCRIPT: filters(StepName.SCRIPT, lambda c: ScriptFilter(c.script)),
        StepName.BLOCKLIST: filters(StepName.BLOCKLIST, lambda c: BlocklistFilter(c.blocklist)),
        StepName.INJECTION: filters(StepName.INJECTION, lambda c: InjectionFilter(c.injection)),
        StepName.REPETITION: filters(StepName.REPETITION, lambda c: RepetitionFilter(c.repetition)),
        StepName.JUDGE: judge,
    }.items():
        register_step(name.value, builder)


_builtin_steps()


def build_steps(config: CleaningConfig | None = None, registry: Any = None) -> list[CleaningStep]:
    """The configured steps, in order (models of the judge and semantic dedup load here)."""
    config = config or CleaningConfig()
    return [STEPS[name](config, registry) for name in config.steps]


# ---- the pipeline -------------------------------------------------------------------------------


@dataclass
class CleaningReport:
    """The reports of every step, and the time spent reading before the first step.

    Attributes:
        steps: one StepReport per step, in order.
        read_seconds: wall time spent producing the records fed to the first step (reading, validating).
        read_cpu_seconds: the CPU time of that.
    """

    steps: list[StepReport]
    read_seconds: float = 0.0
    read_cpu_seconds: float = 0.0

    @property
    def input(self) -> int:
        return self.steps[0].seen if self.steps else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "read_seconds": round(self.read_seconds, 4),
            "read_cpu_seconds": round(self.read_cpu_seconds, 4),
            "steps": [s.to_dict() for s in self.steps],
        }

    def table(self) -> str:
        """A plain-text table: step, in, removed, changed, out, wall and CPU seconds, top reasons."""
        head = ("step", "in", "removed", "changed", "out", "seconds", "cpu", "reasons")
        rows = [
            (
                s.name,
                str(s.seen),
                str(s.removed),
                str(s.changed),
                str(s.kept),
                f"{s.seconds:.2f}",
                f"{s.cpu_seconds:.2f}",
                ", ".join(f"{k}: {v}" for k, v in sorted(s.reasons.items(), key=lambda kv: -kv[1])) or "-",
            )
            for s in self.steps
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
        lines = []
        for row in [head, *rows]:
            cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join([*cells, row[-1]]))
        return "\n".join(lines)


def _timed(records: Iterable[Record], cell: list[float]) -> Iterator[Record]:
    """Yield from ``records``, adding the wall and CPU time spent producing each item to ``cell``."""
    iterator = iter(records)
    wall, cpu = time.perf_counter, time.thread_time
    while True:
        start, start_cpu = wall(), cpu()
        try:
            record = next(iterator)
        except StopIteration:
            cell[0] += wall() - start
            cell[1] += cpu() - start_cpu
            return
        cell[0] += wall() - start
        cell[1] += cpu() - start_cpu
        yield record


class Pipeline:
    """Steps chained lazily; :meth:`run` may be called once per source, state and reports carry over.

    Each step's ``seconds`` (and ``cpu_seconds``) is the time spent inside it alone (its
    cumulative time minus its upstream's), measured while the records stream through.
    """

    def __init__(self, steps: Sequence[CleaningStep]) -> None:
        self.steps = list(steps)
        self._read = [0.0, 0.0]

    @property
    def reports(self) -> list[StepReport]:
        return [step.report for step in self.steps]

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        """The records that pass every step, lazily."""
        cells = [[0.0, 0.0] for _ in range(len(self.steps) + 1)]
        stream: Iterable[Record] = _timed(records, cells[0])
        for step, cell in zip(self.steps, cells[1:]):
            stream = _timed(step.apply(stream), cell)
        try:
            yield from stream
        finally:
            self._read[0] += cells[0][0]
            self._read[1] += cells[0][1]
            for i, step in enumerate(self.steps):
                step.report.seconds += cells[i + 1][0] - cells[i][0]
                step.report.cpu_seconds += cells[i + 1][1] - cells[i][1]

    def report(self) -> CleaningReport:
        return CleaningReport(self.reports, self._read[0], self._read[1])


def clean(
    records: Iterable[Record], config: CleaningConfig | None = None, registry: Any = None
) -> tuple[list[Record], CleaningReport]:
    """Clean an in-memory list of records; returns the kept records and the report.

    For files, use ``alignlab.data.prepare`` (or ``alignlab data prepare``), which streams.
    """
    pipeline = Pipeline(build_steps(config, registry))
    kept = list(pipeline.run(records))
    return kept, pipeline.report()
