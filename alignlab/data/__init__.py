"""Data: formats, detection, validation and loading — the part every stage reads through.

Example:
    >>> from alignlab.data import load_records
    >>> data = load_records("testbed:preferences?n=100", kind="preference")  # doctest: +SKIP
    >>> data.records[0].keys(), data.fingerprint  # doctest: +SKIP
    (dict_keys(['prompt', 'chosen', 'rejected', 'margin']), '3f0c...')

See docs/data.md for the formats, the validation modes and the sources.
"""

from alignlab.data.formats import (
    AUTO,
    FORMATS,
    DataFormat,
    FormatSpec,
    canonical_records,
    detect_format,
    from_messages,
    register_format,
    to_canonical,
    to_messages,
)
from alignlab.data.kinds import RecordKind, ranking_to_pairs
from alignlab.data.loading import (
    LoadReport,
    Records,
    canonicalize,
    fingerprint_records,
    load_records,
    publish_records,
    write_records,
)
from alignlab.data.validation import DropReason, RecordError, SkippedRecord

__all__ = [
    "AUTO",
    "FORMATS",
    "DataFormat",
    "DropReason",
    "FormatSpec",
    "LoadReport",
    "RecordError",
    "RecordKind",
    "Records",
    "SkippedRecord",
    "canonical_records",
    "canonicalize",
    "detect_format",
    "fingerprint_records",
    "from_messages",
    "load_records",
    "publish_records",
    "ranking_to_pairs",
    "register_format",
    "to_canonical",
    "to_messages",
    "write_records",
]
