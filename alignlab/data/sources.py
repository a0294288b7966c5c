"""Where records come from: local files and folders, the testbed, the registry, the hub.

Every reader yields ``(where, value)`` rows: ``where`` names the place (``data.jsonl:7``,
``data.csv:row 3``, ``testbed:sft:record 5``) and ``value`` is the raw record, or a
:class:`RecordError` for a row that could not even be read (malformed JSON), so that a lenient
load can count it and go on.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from alignlab.data import oasst
from alignlab.data.kinds import RecordKind
from alignlab.data.validation import DropReason, RecordError
from alignlab.errors import AlignlabError, DataError, ReferenceNotFound

Row = tuple[str, Any]
FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")
TESTBED_PREFIX = "testbed:"
ARTIFACT_DATA_FILE = "data.jsonl"


@dataclass
class Opened:
    """An opened source: its rows and, for lineage, the id a stage puts in ``Artifact.parents``
    (and the registry Artifact itself when the source is a dataset artifact)."""

    rows: Iterator[Row]
    origin: str | None
    artifact: Any = None


# ---- files ------------------------------------------------------------------------------------


def _invalid_json(where: str, err: json.JSONDecodeError) -> RecordError:
    return RecordError(where, DropReason.INVALID_JSON, f"not valid JSON: {err.msg} (column {err.colno})")


def max_record_bytes() -> int:
    """The largest JSON line read, in bytes: ``ALIGNLAB_MAX_RECORD_MB`` (default 16 MB). A longer
    line is a bad record (named ``file:line``) and is never held in memory whole."""
    raw = os.environ.get("ALIGNLAB_MAX_RECORD_MB", "16")
    try:
        mb = float(raw)
    except ValueError:
        raise DataError(f"ALIGNLAB_MAX_RECORD_MB={raw!r} is not a number of megabytes") from None
    return int(mb * 1024 * 1024)


def _lines(f: Any, limit: int) -> Iterator[tuple[bytes, bool]]:
    """The file's lines as bytes, each cut at ``limit`` (the rest is skipped): ``(line, too_long)``."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield line, True
        else:
            yield line, False


def read_jsonl(path: Path, label: str | None = None) -> Iterator[Row]:
    """JSON lines, parsed line by line so that every error names ``file:line``; blank lines
    skipped. Each line is decoded on its own: bytes that are not UTF-8, or a line longer than
    :func:`max_record_bytes`, make that line a bad record, not the whole file unreadable."""
    label = label or str(path)
    limit = max_record_bytes()
    with open(path, "rb") as f:
        for number, (raw, too_long) in enumerate(_lines(f, limit), start=1):
            where = f"{label}:{number}"
            if too_long:
                yield where, RecordError(where, DropReason.TOO_LARGE,
                                         f"the line is longer than {limit / 2**20:g} MB "
                                         "(ALIGNLAB_MAX_RECORD_MB raises the limit)")  # fmt: skip
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield where, RecordError(where, DropReason.NOT_UTF8,
                                         f"not UTF-8 text: byte 0x{raw[err.start]:02x} at column {err.start + 1}; "
                                         "re-encode the file as UTF-8")  # fmt: skip
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, _invalid_json(where, err)


def _json_array(text: str, label: str) -> Iterator[Row]:
    """The elements of a top-level JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    i = skip(text.index("[") + 1)
    if i < len(text) and text[i] == "]":
        return
    while True:
        where = f"{label}:{text.count(chr(10), 0, i) + 1}"
        value, end = decoder.raw_decode(text, i)  # whole text already known to be valid JSON
        yield where, value
        i = skip(end)
        if text[i] == "]":
            return
        i = skip(i + 1)  # the comma


def read_utf8(path: Path) -> str:
    """A whole file as UTF-8 text; bytes that are not UTF-8 are a DataError naming ``file:line``."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); re-encode the file as UTF-8"
        ) from None


def read_json(path: Path) -> Iterator[Row]:
    """A ``.json`` file: a list of records (numbered by the line each starts on), one record, or JSON lines."""
    label = str(path)
    text = read_utf8(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{") and err.msg == "Extra data":
            yield from read_jsonl(path)
            return
        where = f"{label}:{err.lineno}"
        raise RecordError(
            where, DropReason.INVALID_JSON, f"not valid JSON: {err.msg} (column {err.colno})"
        ) from None
    if isinstance(data, list):
        yield from _json_array(text, label)
    else:
        yield f"{label}:1", data


def _table_rows(rows: Iterator[dict[str, Any]] | list[dict[str, Any]], label: str) -> Iterator[Row]:
    for number, row in enumerate(rows, start=1):
        yield f"{label}:row {number}", row


def read_parquet(path: Path) -> Iterator[Row]:
    """A parquet file through pyarrow, rows numbered from 1."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable parquet file: {err}") from None
    yield from _table_rows(table.to_pylist(), str(path))


_STRUCTURED = ("messages", "conversations", "responses", "history")
_MAYBE_MESSAGES = ("prompt", "chosen", "rejected", "completion", "context")


def _decode_cells(row: dict[str, Any]) -> dict[str, Any]:
    """CSV cells are text: JSON lists in structured columns (messages, responses ...) are decoded."""
    out = dict(row)
    for key, value in row.items():
        if not (isinstance(value, str) and value.lstrip().startswith("[")):
            continue
        if key in _STRUCTURED or key in _MAYBE_MESSAGES:
            try:
                decoded = json.loads(value)
            except json.JSONDecodeError:
                continue
            if key in _STRUCTURED or (
                isinstance(decoded, list) and all(isinstance(m, dict) for m in decoded)
            ):
                out[key] = decoded
    return out


def read_csv(path: Path) -> Iterator[Row]:
    """A CSV file through pyarrow, every column read as text (a numeric answer stays a string)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with pacsv.open_csv(path) as reader:  # only the header: every column is then read as text
            names = reader.schema.names
        options = pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=False
        )
        table = pacsv.read_csv(path, convert_options=options)
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: not a readable CSV file: {err}") from None
    yield from _table_rows((_decode_cells(r) for r in table.to_pylist()), str(path))


_READERS = {".jsonl": read_jsonl, ".json": read_json, ".parquet": read_parquet, ".csv": read_csv}


def read_file(path: Path) -> Iterator[Row]:
    """Rows of a local data file, by suffix."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(FILE_TYPES)}"
        )
    return reader(path)


def object_rows(path: str | Path, what: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each object of a local data file (:func:`read_file`'s types), for the
    files a command or setting names (``what``: its name in the error of a missing file).

    Raises:
        DataError: no such file, a line that is not valid JSON, or a row that is not an object
            (each naming the file and line).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{what}: no such file: {file}")
    for where, row in read_file(file):
        if isinstance(row, RecordError):
            raise DataError(str(row))
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").exists() or (
        (folder / "state.json").exists() and (folder / "dataset_info.json").exists()
    )


def read_saved_dataset(folder: Path, split: str) -> Iterator[Row]:
    """A ``datasets`` ``save_to_disk`` folder (a Dataset, or a DatasetDict from which ``split`` is taken)."""
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{folder}: no split {split!r}; it has {', '.join(loaded)}")
        loaded = loaded[split]
    yield from _table_rows(iter(loaded), str(folder))


def read_folder(folder: Path, split: str) -> Iterator[Row]:
    """A dataset folder: an alignlab artifact (``data.jsonl``), a ``save_to_disk`` folder, or one data file."""
    if (folder / ARTIFACT_DATA_FILE).is_file():
        return read_jsonl(folder / ARTIFACT_DATA_FILE)
    if _is_saved_dataset(folder):
        return read_saved_dataset(folder, split)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FILE_TYPES)
    if len(files) == 1:
        return read_file(files[0])
    raise DataError(
        f"{folder}: a dataset folder must hold {ARTIFACT_DATA_FILE}, a datasets save_to_disk dataset or exactly "
        f"one data file ({', '.join(FILE_TYPES)}); found {len(files)} data files"
    )


# ---- testbed, registry, hub -------------------------------------------------------------------


def _value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_testbed(source: str) -> tuple[str, dict[str, Any]]:
    """``"testbed:sft?n=200&seed=1"`` -> ``("sft", {"n": 200, "seed": 1})``."""
    name, _, query = source[len(TESTBED_PREFIX) :].partition("?")
    if not name:
        raise DataError(f"{source!r}: name a testbed source, e.g. 'testbed:sft?n=200'")
    return name, {k: _value(v) for k, v in parse_qsl(query, keep_blank_values=True)}


def read_testbed(source: str, kind: RecordKind) -> Iterator[Row]:
    """Records from ``alignlab.testbed.source(name, **kwargs)`` (imported only when asked for)."""
    name, kwargs = parse_testbed(source)
    try:
        testbed = importlib.import_module("alignlab.testbed")
    except ImportError as err:
        raise DataError(f"{source!r}: the testbed is not available ({err})") from err
    try:
        items = testbed.source(name, **kwargs)
    except AlignlabError:
        raise
    except (TypeError, ValueError, KeyError) as err:
        raise DataError(f"{source!r}: the testbed refused these arguments: {err}") from err
    wrap = "prompt" if kind == RecordKind.PROMPT else "text"
    for number, item in enumerate(items, start=1):
        yield f"{source}:record {number}", {wrap: item} if isinstance(item, str) else item


class HubUnreachable(DataError):
    """A data source that can only be a hub dataset, and the hub could not be reached.

    A dry run reports it as not checked rather than as wrong: without the network nothing can
    tell a hub dataset that exists from one that does not.
    """

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


def read_hub(name: str, split: str, registry_says: str = "") -> Iterator[Row]:
    """A Hugging Face hub dataset through ``datasets.load_dataset``.

    Args:
        registry_says: why the registry did not know the name, added to the error.
    """
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # offline, missing, gated, bad split: all mean "not reachable" here
        note = f" (registry: {registry_says})" if registry_says else ""
        raise HubUnreachable(
            f"{name!r} is neither a local file or folder, a testbed source ('testbed:<name>'), a registry "
            f"reference{note} nor a reachable hub dataset: {type(err).__name__}: {err}",
            name,
        ) from err
    yield from _table_rows(iter(dataset), f"hf:{name}")


def _looks_like_path(source: str) -> bool:
    return source.lower().endswith(FILE_TYPES) or source.startswith(("/", "./", "../", "~")) or "\\" in source


def _from_registry(source: str, registry: Any, split: str) -> Opened | str:
    """The dataset artifact ``source`` names in ``registry``, or why it names none."""
    try:
        resolved = registry.resolve(source)
    except ReferenceNotFound as err:
        return str(err)
    if getattr(resolved, "is_local", None) is not None:  # an ExternalRef: a path or a hub id
        return f"{source!r} is not an artifact"
    if getattr(resolved, "kind", None) != "dataset":
        raise DataError(
            f"{source!r} is a registry artifact of kind {getattr(resolved, 'kind', '?')!r} ({resolved.ref}), "
            "not a dataset"
        )
    return Opened(read_folder(Path(resolved.path), split), resolved.id, resolved)


def open_source(source: str, *, kind: RecordKind, registry: Any = None, split: str = "train") -> Opened:
    """Open ``source``: testbed, local file or folder, registry reference, else a hub dataset name.

    OASST's flat message rows come out grouped into conversation trees (:func:`alignlab.data.oasst.assemble`).

    Raises:
        DataError: a missing file (naming the path), an unreadable file, or a name that is none
            of the above.
    """
    from alignlab.data.messages import reset_loose_warnings

    reset_loose_warnings()  # a new load: each loose form it converts warns once
    opened = _open(source, kind=kind, registry=registry, split=split)
    return dataclasses.replace(opened, rows=oasst.assemble(opened.rows))


def _open(source: str, *, kind: RecordKind, registry: Any, split: str) -> Opened:
    if source.startswith(TESTBED_PREFIX):
        return Opened(read_testbed(source, kind), None)
    path = Path(source).expanduser()
    if path.is_file():
        return Opened(read_file(path), f"path:{path.resolve()}")
    if path.is_dir():
        origin = f"path:{path.resolve()}"
        if registry is not None:
            opened = _from_registry(str(path), registry, split)
            if isinstance(opened, Opened):
                return opened
        return Opened(read_folder(path, split), origin)
    if _looks_like_path(source):
        raise DataError(f"no such file or folder: {path} (from source {source!r})")
    registry_says = ""
    if registry is not None and not source.startswith("hf:"):
        opened = _from_registry(source, registry, split)
        if isinstance(opened, Opened):
            return opened
        registry_says = opened
    name = source.removeprefix("hf:")
    return Opened(read_hub(name, split, registry_says), f"hf:{name}")
