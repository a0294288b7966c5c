"""`GenerateData`: instruction data made by a teacher model — self-instruct (Alpaca, BELLE) or imitation.

Two modes:

- **self_instruct** (Wang et al. 2022, "Self-Instruct"; Stanford Alpaca's simplified version;
  BELLE's Chinese one): each request shows the teacher ``examples_per_prompt`` (3) seed tasks
  drawn at random and asks for ``tasks_per_prompt`` (20) new, diverse ones, each an instruction,
  an optional input (``<noinput>``) and an output, numbered as Alpaca's prompt numbers them. The
  reply is parsed into tasks, and Alpaca's filters drop those whose instruction is shorter than
  3 or longer than 150 words, names what a text model cannot do (image, graph, file, draw, ...),
  starts with punctuation, or repeats an instruction already kept. Requests go on until
  ``num_tasks`` tasks are kept or ``max_requests`` were sent.
- **imitation**: the teacher answers every prompt of a prompt set (``data``; greedy by default);
  each prompt and its answer become a conversation, as "imitation" fine-tuning on a stronger
  model's outputs does.

The records then go through the cleaning pipeline (``cleaning``: normalize, exact and near
dedup, length by default; the LLM judge can be added), and are published as a dataset artifact
of SFT conversations whose lineage names the teacher (a parent artifact, or the endpoint in the
config), the seed tasks or prompts (data sources with their sha256), and the prompt template.

The teacher is a model input (``teacher``: a registry model, a local folder, a hub id) that
generates on this machine, or an OpenAI-compatible endpoint (``endpoint.model``), never both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import string
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from alignlab.config import check_range, load_config
from alignlab.data.cleaning import CleaningConfig
from alignlab.errors import ConfigError, DataError
from alignlab.registry import Artifact, Registry
from alignlab.stages.contract import Input
from alignlab.stages.groups import DataSource
from alignlab.stages.lifecycle import SourceRecord, StageRun, load_data, publish_stage, resolve_inputs

log = logging.getLogger("alignlab")

TEACHER_OUTPUTS = "teacher_outputs.jsonl"  # every request and the teacher's reply, for audit

# Stanford Alpaca's self-instruct prompt (github.com/tatsu-lab/stanford_alpaca, prompt.txt),
# its nine requirements kept, with {n} tasks asked for and {examples} the numbered seed tasks.
SELF_INSTRUCT_TEMPLATE = """You are asked to come up with a set of {n} diverse task instructions. These task instructions will be given to a GPT model and we will evaluate the GPT model for completing the instructions.

Here are the requirements:
1. Try not to repeat the verb for each instruction to maximize diversity.
2. The language used for the instruction also should be diverse. For example, you should combine questions with imperative instructions.
3. The type of instructions should be diverse. The list should include diverse types of tasks like open-ended generation, classification, editing, etc.
4. A GPT language model should be able to complete the instruction. For example, do not ask the assistant to create any visual or audio output. For another example, do not ask the assistant to wake you up at 5pm or set a reminder because it cannot perform any action.
5. The instructions should be in {language}.
6. The instructions should be 1 to 2 sentences long. Either an imperative sentence or a question is permitted.
7. You should generate an appropriate input to the instruction. The input field should contain a specific example provided for the instruction. It should involve realistic data and should not contain simple placeholders. The input should provide substantial content to make the instruction challenging but should ideally not exceed 100 words.
8. Not all instructions require input. For example, when an instruction asks about some general information, "what is the highest peak in the world", it is not necessary to provide a specific context. In this case, we simply put "<noinput>" in the input field.
9. The output should be an appropriate response to the instruction and the input. Make sure the output is less than 100 words.

List of {n} tasks:
{examples}"""

# Alpaca's filter: what a text-only model cannot do (generate_instruction.py)
BLOCKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip


class GenerationMode(StrEnum):
    """What the teacher is asked to do."""

    SELF_INSTRUCT = "self_instruct"
    IMITATION = "imitation"


@dataclass
class SelfInstructSettings:
    """Self-instruct: new tasks from seed tasks (Alpaca's settings as defaults).

    Attributes:
        seed_tasks: a JSONL file of seed tasks: Alpaca's ``seed_tasks.jsonl`` rows
            (``instruction`` and ``instances: [{input, output}]``) or plain
            ``{instruction, input?, output}`` rows.
        num_tasks: tasks to keep (after the filters, before cleaning).
        examples_per_prompt: seed tasks shown in each request (Alpaca: 3).
        tasks_per_prompt: tasks asked for in each request (Alpaca: 20).
        max_requests: stop after this many requests even if fewer tasks were kept; None =
            4 × the requests ``num_tasks`` needs at ``tasks_per_prompt`` each.
        language: the language the instructions should be in (BELLE asks for Chinese).
        template: the request, with ``{n}``, ``{language}`` and ``{examples}``; None = Alpaca's.
        min_words: shortest instruction kept, in words (Alpaca: 3).
        max_words: longest instruction kept (Alpaca: 150).
        blocklist: words (whole, any case) that drop an instruction; Alpaca's list by default.
    """

    seed_tasks: str | None = None
    num_tasks: int = 64
    examples_per_prompt: int = 3
    tasks_per_prompt: int = 20
    max_requests: int | None = None
    language: str = "English"
    template: str | None = None
    min_words: int = 3
    max_words: int = 150
    blocklist: list[str] = field(default_factory=lambda: list(BLOCKLIST))

    def __post_init__(self) -> None:
        for name in ("num_tasks", "examples_per_prompt", "tasks_per_prompt", "max_requests"):
            check_range(self, name, low=1)
        if self.template is not None:
            missing = [f for f in ("{n}", "{examples}") if f not in self.template]
            if missing:
                raise ConfigError(f"self_instruct.template must contain {' and '.join(missing)}")


@dataclass
class TeacherEndpoint:
    """An OpenAI-compatible endpoint as the teacher (instead of the ``teacher`` input).

    Attributes:
        model: the model the endpoint serves; None = the teacher is the ``teacher`` input.
        base_url: the API root, e.g. http://127.0.0.1:8000/v1.
        api_key_env: the environment variable holding the key.
        timeout: seconds per request.
        max_retries: retries on connection errors and 429/5xx.
        concurrency: requests in flight at once.
    """

    model: str | None = None
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 2
    concurrency: int = 4


@dataclass
class TeacherSampling:
    """How the teacher samples.

    Attributes:
        temperature: None = 1.0 for self_instruct (Alpaca's) and 0 (greedy) for imitation.
        top_p: nucleus sampling threshold.
        max_new_tokens: longest reply (a self-instruct reply holds ``tasks_per_prompt`` tasks).
        batch_size: requests per generation batch of a local teacher.
        seed: seeds the choice of seed tasks and the local teacher's sampling.
    """

    temperature: float | None = None
    top_p: float = 1.0
    max_new_tokens: int = 1024
    batch_size: int = 4
    seed: int = 0


@dataclass
class ImitationData(DataSource):
    """The prompts the teacher answers in imitation mode.

    Attributes:
        source: a file of prompts (or conversations: their prompt part is used), a testbed
            source, a dataset artifact or a hub dataset name.
    """

    source: str = "testbed:prompts"


def _default_cleaning() -> CleaningConfig:
    return CleaningConfig(steps=["normalize", "exact_dedup", "near_dedup", "length"])


@dataclass
class GenerateDataConfig:
    """Settings of a data-generation run.

    Attributes:
        output: name of the dataset artifact to publish.
        mode: self_instruct | imitation.
        self_instruct: the self-instruct settings (seed tasks, how many, Alpaca's filters).
        data: the prompts the teacher answers (imitation).
        endpoint: an OpenAI-compatible endpoint as teacher (instead of the ``teacher`` input).
        sampling: how the teacher samples.
        cleaning: the cleaning steps the generated records go through (docs/data_cleaning.md).
    """

    output: str = "generated"
    mode: GenerationMode = GenerationMode.SELF_INSTRUCT
    self_instruct: SelfInstructSettings = field(default_factory=SelfInstructSettings)
    data: ImitationData = field(default_factory=ImitationData)
    endpoint: TeacherEndpoint = field(default_factory=TeacherEndpoint)
    sampling: TeacherSampling = field(default_factory=TeacherSampling)
    cleaning: CleaningConfig = field(default_factory=_default_cleaning)

    def __post_init__(self) -> None:
        try:
            self.mode = GenerationMode(self.mode)
        except ValueError:
            raise ConfigError(f"mode: {self.mode!r} is not one of self_instruct, imitation") from None


# ---- seed tasks, the request, the reply -------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One instruction task: instruction, input ("" for none), output."""

    instruction: str
    input: str
    output: str

    def as_record(self) -> dict[str, Any]:
        """The task as an SFT conversation (the user turn is Alpaca's instruction + input)."""
        user = f"{self.instruction}\n\n{self.input}" if self.input.strip() else self.instruction
        return {
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": self.output}]
        }


def load_seed_tasks(path: str) -> list[Task]:
    """Seed tasks from JSONL: Alpaca's rows (``instruction``, ``instances: [{input, output}]``)
    or ``{instruction, input?, output}``. A bad line is a DataError naming file, line and field."""
    from alignlab.data.sources import object_rows

    tasks = []
    for where, row in object_rows(path, "self_instruct.seed_tasks"):
        instances = row.get("instances") or [row]
        if not isinstance(instances, list) or not isinstance(instances[0], dict):
            raise DataError(f"{where}: field 'instances' must be a list of {{input, output}} objects")
        instruction, first = row.get("instruction"), instances[0]
        values = {
            "instruction": instruction,
            "input": first.get("input") or "",
            "output": first.get("output"),
        }
        for key, value in values.items():
            if not isinstance(value, str) or (key != "input" and not value.strip()):
                raise DataError(f"{where}: field '{key}' must be a non-empty string")
        tasks.append(Task(values["instruction"].strip(), values["input"].strip(), values["output"].strip()))
    if not tasks:
        raise DataError(f"{path}: no seed tasks")
    return tasks


def self_instruct_prompt(
    examples: list[Task], n: int, language: str = "English", template: str | None = None
) -> str:
    """The request: the requirements, then the examples numbered 1..k as Alpaca writes them, then
    the number of the first task to write."""
    blocks = []
    for i, task in enumerate(examples, start=1):
        blocks.append(
            f"###\n{i}. Instruction: {task.instruction}\n{i}. Input:\n{task.input or '<noinput>'}\n{i}. Output:\n{task.output}"
        )
    blocks.append(f"###\n{len(examples) + 1}. Instruction:")
    return (template or SELF_INSTRUCT_TEMPLATE).format(n=n, language=language, examples="\n".join(blocks))


_TASK = re.compile(
    r"(\d+)\s*\.\s*Instruction:\s*(?P<instruction>.*?)\s*\1\s*\.\s*Input:\s*(?P<input>.*?)\s*\1\s*\.\s*Output:"
    r"\s*(?P<output>.*?)(?=\n\s*#{3}|\n\s*\d+\s*\.\s*Instruction:|\Z)",
    re.DOTALL,
)


def parse_tasks(reply: str, first: int) -> list[Task]:
    """The tasks in a teacher's reply. The reply may continue the request's last line (its first
    task then lacks ``{first}. Instruction:``, which is put back) or restate it; a task without
    an instruction, input and output line is not a task."""
    text = reply.strip()
    if not re.match(r"(?:#{3}\s*)?\d+\s*\.\s*Instruction:", text):
        text = f"{first}. Instruction: {text}"
    tasks = []
    for m in _TASK.finditer(text):
        instruction = m["instruction"].strip()
        input_ = m["input"].strip()
        input_ = "" if input_.lower() in ("<noinput>", "<no input>", "noinput", "") else input_
        output = m["output"].strip().rstrip("#").strip()
        if instruction and output:
            tasks.append(Task(instruction, input_, output))
    return tasks


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class TaskFilter:
    """Alpaca's filters on generated instructions, counting what each drops."""

    def __init__(self, settings: SelfInstructSettings, seeds: list[Task]) -> None:
        self.s = settings
        self.blocked = [
            re.compile(rf"(?<!\w){re.escape(w.lower())}(?!\w)") for w in settings.blocklist if w.strip()
        ]
        self.seen = {_normal(t.instruction) for t in seeds}
        self.dropped: dict[str, int] = {}

    def _drop(self, reason: str) -> bool:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return False

    def keep(self, task: Task) -> bool:
        words = len(task.instruction.split())
        if words < self.s.min_words:
            return self._drop("instruction too short")
        if words > self.s.max_words:
            return self._drop("instruction too long")
        lowered = task.instruction.lower()
        if any(p.search(lowered) for p in self.blocked):
            return self._drop("asks for what a text model cannot do")
        if task.instruction[0] in string.punctuation:
            return self._drop("starts with punctuation")
        key = _normal(task.instruction)
        if key in self.seen:
            return self._drop("repeats an instruction")
        self.seen.add(key)
        return True


# ---- teachers ---------------------------------------------------------------------------------------


class LocalTeacher:
    """A causal LM on this machine, sampling through its chat template."""

    def __init__(self, model: Any, tokenizer: Any, sampling: TeacherSampling, name: str) -> None:
        self.model, self.tokenizer, self.sampling, self.name = model, tokenizer, sampling, name
        self.calls = 0  # each batch samples with its own seed (sampling.seed + batch number)

    def complete(self, conversations: list[list[dict[str, str]]], temperature: float) -> list[str]:
        from alignlab.models import generate

        s = self.sampling
        self.calls += 1
        return generate(
            self.model,
            self.tokenizer,
            conversations,
            max_new_tokens=s.max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=s.top_p,
            batch_size=s.batch_size,
            seed=s.seed + self.calls,
        )


class EndpointTeacher:
    """An OpenAI-compatible endpoint (:class:`~alignlab.models.endpoint.ChatEndpoint`)."""

    def __init__(self, endpoint: TeacherEndpoint, sampling: TeacherSampling) -> None:
        from alignlab.models.endpoint import ChatEndpoint, EndpointSettings

        self.sampling = sampling
        self.endpoint = ChatEndpoint(
            EndpointSettings(
                model=endpoint.model or "",
                base_url=endpoint.base_url,
                api_key_env=endpoint.api_key_env,
                max_tokens=sampling.max_new_tokens,
                timeout=endpoint.timeout,
                max_retries=endpoint.max_retries,
                concurrency=endpoint.concurrency,
            )
        )
        self.name = self.endpoint.name

    def complete(self, conversations: list[list[dict[str, str]]], temperature: float) -> list[str]:
        return self.endpoint.complete(conversations, temperature=temperature, top_p=self.sampling.top_p)


# ---- the stage --------------------------------------------------------------------------------------


class GenerateData:
    """Generate SFT data with a teacher and publish it as a dataset artifact.

    Example:
        >>> from alignlab import Registry
        >>> from alignlab.stages.generate_data import GenerateData
        >>> art = GenerateData({"self_instruct": {"seed_tasks": "seed_tasks.jsonl", "num_tasks": 40}}).run(
        ...     Registry(), teacher="smollm2")  # doctest: +SKIP
        >>> art.metrics["records"]  # doctest: +SKIP
    """

    name = "generate_data"
    config_cls = GenerateDataConfig
    inputs = (
        Input(
            "teacher",
            required=False,
            doc="the model that writes the data (or set endpoint.model for an OpenAI-compatible endpoint)",
        ),
    )

    def __init__(self, config: GenerateDataConfig | dict | None = None) -> None:
        self.config = load_config(GenerateDataConfig, config)

    def output_kind(self) -> str:
        return "dataset"

    def check(self, registry: Registry, *, teacher: Any = None) -> None:
        self._prepare(registry, teacher)

    def _prepare(self, registry: Registry, teacher: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        from alignlab.registry import sha256_of

        cfg = self.config
        has_input = teacher is not None and not (isinstance(teacher, str) and not teacher.strip())
        if has_input == bool(cfg.endpoint.model):
            raise ConfigError(
                "generate_data: give the teacher as the 'teacher' input (a model reference) or as "
                "endpoint.model (an OpenAI-compatible endpoint), "
                + ("not both" if has_input else "one of them")
            )
        inputs = resolve_inputs(registry, self, {"teacher": teacher})
        data: dict[str, Any] = {}
        if cfg.endpoint.model:
            name = f"openai:{cfg.endpoint.model}@{cfg.endpoint.base_url}"
            data["teacher"] = SourceRecord(name, hashlib.sha256(name.encode()).hexdigest()[:16])
        if cfg.mode == GenerationMode.SELF_INSTRUCT:
            seeds = cfg.self_instruct.seed_tasks or ""
            if not seeds:
                raise ConfigError("self_instruct.seed_tasks: self-instruct needs a JSONL file of seed tasks")
            load_seed_tasks(seeds)  # a bad seed file fails here, before any model loads
            data["seed_tasks"] = SourceRecord(
                str(Path(seeds).expanduser().resolve()), sha256_of(Path(seeds).expanduser())
            )
        else:
            data["prompts"] = load_data(cfg.data, "prompt", registry)
        return inputs, data

    def run(self, registry: Registry | None = None, *, teacher: Any = None, force: bool = False) -> Artifact:
        """Generate, filter, clean and publish; returns the dataset artifact."""
        registry = registry or Registry()
        inputs, data = self._prepare(registry, teacher)
        return publish_stage(self, registry, inputs=inputs, data=data, force=force, body=self._body)

    def _teacher(self, run: StageRun) -> LocalTeacher | EndpointTeacher:
        cfg = self.config
        if cfg.endpoint.model:
            return EndpointTeacher(cfg.endpoint, cfg.sampling)
        from alignlab.models import load_causal_lm

        target = run.inputs["teacher"]
        model, tok = load_causal_lm(target, run.registry)
        return LocalTeacher(model, tok, cfg.sampling, getattr(target, "ref", None) or str(target))

    def _body(self, run: StageRun) -> None:
        from alignlab.data import write_records
        from alignlab.data.cleaning import clean
        from alignlab.data.sources import ARTIFACT_DATA_FILE
        from alignlab.distributed.runtime import is_main_process

        if not is_main_process():  # generation is not collective: the main process does it alone
            return
        cfg = self.config
        teacher = self._teacher(run)
        audit: list[dict[str, Any]] = []
        if cfg.mode == GenerationMode.SELF_INSTRUCT:
            records, stats = self._self_instruct(teacher, audit)
        else:
            records, stats = self._imitation(teacher, run.data["prompts"].records, audit)
        write_records(run.dir / TEACHER_OUTPUTS, audit)
        if not records:
            first = " ".join(str(audit[0]["reply"]).split())[:160] if audit else ""
            raise DataError(
                f"generate_data: the teacher ({teacher.name}) produced no usable record in "
                f"{stats['requests']} request(s) ({stats['dropped'] or 'nothing parsed'}); its first reply "
                f"began {first!r}. A small model rarely follows the task format: use a larger teacher "
                "or raise self_instruct.max_requests"
            )
        kept, report = clean(records, cfg.cleaning, run.registry)
        if not kept:
            raise DataError(
                f"generate_data: cleaning removed all {len(records)} generated records ({report.table()})"
            )
        write_records(run.dir / ARTIFACT_DATA_FILE, kept)
        (run.dir / "cleaning_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        run.metrics.update(
            {
                "records": len(kept),
                "generated": len(records),
                "removed_by_cleaning": len(records) - len(kept),
                "teacher": teacher.name,
                "mode": cfg.mode.value,
                **stats,
            }
        )
        log.info(
            "generate_data: %d records from %s (%d generated, %d removed by cleaning)",
            len(kept),
            teacher.name,
            len(records),
            len(records) - len(kept),
        )

    def _self_instruct(
        self, teacher: Any, audit: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from tqdm.auto import tqdm

        cfg, s = self.config, self.config.self_instruct
        seeds = load_seed_tasks(s.seed_tasks or "")
        rng = random.Random(cfg.sampling.seed)
        temperature = 1.0 if cfg.sampling.temperature is None else cfg.sampling.temperature
        limit = s.max_requests or 4 * math.ceil(s.num_tasks / s.tasks_per_prompt)
        keep = TaskFilter(s, seeds)
        kept: list[Task] = []
        requests = parsed = 0
        k = min(s.examples_per_prompt, len(seeds))
        bar = tqdm(total=s.num_tasks, desc="self-instruct", unit="task")
        while len(kept) < s.num_tasks and requests < limit:
            size = min(cfg.sampling.batch_size, limit - requests)
            prompts = [
                self_instruct_prompt(rng.sample(seeds, k), s.tasks_per_prompt, s.language, s.template)
                for _ in range(size)
            ]
            replies = teacher.complete([[{"role": "user", "content": p}] for p in prompts], temperature)
            requests += size
            for prompt, reply in zip(prompts, replies):
                tasks = parse_tasks(reply, k + 1)
                parsed += len(tasks)
                audit.append({"request": prompt, "reply": reply, "tasks": len(tasks)})
                for task in tasks:
                    if len(kept) < s.num_tasks and keep.keep(task):
                        kept.append(task)
                        bar.update(1)
        bar.close()
        if len(kept) < s.num_tasks:
            log.warning(
                "self-instruct: %d of %d tasks after %d requests (max_requests); %s",
                len(kept),
                s.num_tasks,
                requests,
                keep.dropped or "the replies held few parseable tasks",
            )
        stats = {"requests": requests, "tasks_parsed": parsed, "dropped": dict(keep.dropped)}
        return [t.as_record() for t in kept], stats

    def _imitation(
        self, teacher: Any, prompts: list[dict[str, Any]], audit: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        cfg = self.config
        temperature = 0.0 if cfg.sampling.temperature is None else cfg.sampling.temperature
        chats = [r["prompt"] for r in prompts]
        replies = teacher.complete(chats, temperature)
        records, empty = [], 0
        for chat, reply in zip(chats, replies):
            audit.append({"request": chat, "reply": reply})
            if reply.strip():
                records.append({"messages": [*chat, {"role": "assistant", "content": reply.strip()}]})
            else:
                empty += 1
        dropped = {"empty answer": empty} if empty else {}
        return records, {"requests": len(chats), "dropped": dropped}
