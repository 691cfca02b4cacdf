"""Knowledge-base findings: one JSON object per line in a ``findings.jsonl`` file.

A finding is one measured or verified fact about a prototype (see ``DESIGN.md``, "Findings"). Every
finding names the device it came from; a number measured on the ``host`` backend is a CPU number and is
never an Apple-GPU claim (:func:`is_apple_gpu`, :func:`device_label`).

Writing is safe under concurrency: :func:`emit_many` takes an exclusive ``flock`` on ``<file>.lock``,
writes the whole new file to a temporary file in the same directory, ``fsync``s it and ``os.replace``s
it over the old one, so concurrent writers lose nothing and a crash never leaves a half-written file.
A finding whose ``id`` is already in the file replaces that line; :func:`make_id` builds stable ids so
re-running a bench replaces its own findings.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import json
import math
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

KINDS: tuple[str, ...] = ("performance", "numerics", "memory", "compile", "api", "ecosystem")
"""The allowed values of ``Finding.kind``."""

FIELDS: tuple[str, ...] = (
    "id", "proto", "kind", "question", "claim", "metric", "value", "unit",
    "config", "device", "evidence", "created", "version",
)
"""Every field of a finding record, in file order."""

ENV_PATH = "ATTENTION_PROTO_FINDINGS"
"""Environment variable naming the findings file (default ``./findings/findings.jsonl``)."""

MAX_CLAIM_CHARS = 400
_EVIDENCE_NUMBERS = ("median", "p20", "p80", "mean", "spread")
_EVIDENCE_TEXT = ("test", "table", "derived")


class FindingError(ValueError):
    """A finding record (or a line of a findings file) does not follow the schema."""


def default_path() -> Path:
    """The findings file: ``$ATTENTION_PROTO_FINDINGS`` or ``./findings/findings.jsonl``."""
    return Path(os.environ.get(ENV_PATH) or Path("findings") / "findings.jsonl")


def utc_now() -> str:
    """The current time as ISO 8601 UTC with second precision, e.g. ``2025-01-31T12:00:00Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_version() -> str:
    """The attention-proto version: ``attention_proto.__version__``, else the installed metadata."""
    import attention_proto as ap

    version = getattr(ap, "__version__", None)
    if isinstance(version, str) and version:
        return version
    from importlib import metadata

    try:
        return metadata.version("attention-proto")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` with numpy scalars/arrays turned into Python numbers/lists and tuples into lists."""
    if isinstance(obj, Mapping):
        return {key: jsonable(val) for key, val in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(val) for val in obj]
    if type(obj).__module__ == "numpy":
        return jsonable(obj.tolist())  # numpy scalars and arrays both have tolist()
    return obj


@dataclasses.dataclass
class Finding:
    """One knowledge-base finding. Construction validates it (raises :class:`FindingError`).

    ``question`` is the id of the bench question it answers (see ``benchspec.Question``), "" for none.
    ``device`` is the backend's ``device_info()`` dict (at least ``backend``, ``name``, ``family``);
    ``evidence`` holds timing statistics (``samples``, ``median``, ``p20``, ``p80``, ``spread``; see
    ``TimingStats.evidence()``), the ``test`` that shows the fact, the ``table`` it comes from, or, for
    derived arithmetic (a formula's result, not a measurement), ``derived``: the formula.
    Numpy scalars and arrays in ``value``/``config``/``evidence`` are converted to plain JSON types.
    """

    id: str
    proto: str
    kind: str
    claim: str
    metric: str
    value: float
    unit: str
    config: dict[str, Any]
    device: dict[str, Any]
    evidence: dict[str, Any]
    created: str = dataclasses.field(default_factory=utc_now)
    version: str = dataclasses.field(default_factory=package_version)
    question: str = ""

    def __post_init__(self) -> None:
        for name in ("value", "config", "device", "evidence"):
            setattr(self, name, jsonable(getattr(self, name)))
        validate(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict in file field order."""
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_dict(cls, record: Any) -> Finding:
        """Builds (and so validates) a finding from a record; raises :class:`FindingError`. A record
        without ``question`` (written before findings named one) answers none ("")."""
        _check_fields(record)
        return cls(**record)

    def to_json(self) -> str:
        """The finding as one line of JSON (no trailing newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)


def _fail(field: str, why: str) -> None:
    raise FindingError(f"field '{field}': {why}")


def _check_text(record: Mapping[str, Any], field: str, *, allow_empty: bool = False) -> None:
    value = record[field]
    if not isinstance(value, str):
        _fail(field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        _fail(field, "must not be empty")
    if "\n" in value or "\r" in value:
        _fail(field, "must be a single line")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(field: str, value: Any) -> None:
    if not _is_number(value):
        _fail(field, f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        _fail(field, f"must be finite, got {value!r}")


def _check_object(record: Mapping[str, Any], field: str) -> None:
    value = record[field]
    if not isinstance(value, dict):
        _fail(field, f"expected an object (dict), got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            _fail(field, f"keys must be strings, got {key!r}")


def _check_created(value: Any) -> None:
    if not isinstance(value, str):
        _fail("created", f"expected an ISO 8601 string, got {type(value).__name__}")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        stamp = _dt.datetime.fromisoformat(text)
    except ValueError:
        _fail("created", f"not an ISO 8601 timestamp: {value!r}")
    if stamp.utcoffset() != _dt.timedelta(0):
        _fail("created", f"must be UTC (suffix Z or +00:00), got {value!r}")


def _check_device(device: dict[str, Any]) -> None:
    for key in ("backend", "name", "family"):
        if key not in device:
            _fail("device", f"missing '{key}'")
        if not isinstance(device[key], str):
            _fail("device", f"'{key}' must be a string, got {type(device[key]).__name__}")
    for key in ("backend", "name"):
        if not device[key].strip():
            _fail("device", f"'{key}' must not be empty")


def _check_evidence(evidence: dict[str, Any]) -> None:
    if not any(key in evidence for key in ("samples", *_EVIDENCE_NUMBERS, *_EVIDENCE_TEXT)):
        _fail("evidence", "needs timing statistics (samples, median, p20, p80, spread), "
                          "the 'test' that shows the finding, the 'table' it comes from, or the formula it "
                          "is 'derived' from")
    for key in _EVIDENCE_NUMBERS:
        if key in evidence:
            _check_number(f"evidence.{key}", evidence[key])
    if "samples" in evidence:
        samples = evidence["samples"]
        if not isinstance(samples, list) or not samples:
            _fail("evidence.samples", "expected a non-empty list of numbers")
        for sample in samples:
            _check_number("evidence.samples", sample)
    for key in _EVIDENCE_TEXT:
        if key in evidence and (not isinstance(evidence[key], str) or not evidence[key].strip()):
            _fail(f"evidence.{key}", "expected a non-empty string")


def _check_fields(record: Any) -> None:
    if not isinstance(record, Mapping):
        raise FindingError(f"a finding must be a JSON object, got {type(record).__name__}")
    for field in FIELDS:
        if field not in record and field != "question":  # optional: older findings name no question
            _fail(field, "missing")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        _fail(unknown[0], f"unknown field (allowed: {', '.join(FIELDS)})")


def validate(record: Any) -> None:
    """Checks one finding record (a dict as stored in the file) against the schema.

    Raises :class:`FindingError` naming the first wrong field and why: a missing or unknown field,
    a wrong type, an unknown ``kind``, an empty or multi-line ``claim``, a non-finite ``value``, a
    ``device`` without ``backend``/``name``/``family``, evidence without statistics or a test, a
    ``created`` that is not ISO 8601 UTC.
    """
    _check_fields(record)
    for field in ("id", "proto", "metric", "version"):
        _check_text(record, field)
    _check_text(record, "unit", allow_empty=True)
    if "question" in record:
        _check_text(record, "question", allow_empty=True)
    _check_text(record, "claim")
    if record["kind"] not in KINDS:
        _fail("kind", f"unknown kind {record['kind']!r} (expected one of: {', '.join(KINDS)})")
    if len(record["claim"]) > MAX_CLAIM_CHARS:
        _fail("claim", f"must be one sentence (at most {MAX_CLAIM_CHARS} characters), "
                       f"got {len(record['claim'])}")
    _check_number("value", record["value"])
    for field in ("config", "device", "evidence"):
        _check_object(record, field)
    _check_device(record["device"])
    _check_evidence(record["evidence"])
    for field in ("config", "device", "evidence"):
        try:
            json.dumps(record[field], allow_nan=False)
        except (TypeError, ValueError) as exc:
            _fail(field, f"not JSON-serialisable ({exc})")
    _check_created(record["created"])


def _id_part(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return "_".join(str(value).split())
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"))


def make_id(proto: str, metric: str, config: Mapping[str, Any], backend: str | None = None) -> str:
    """A stable, readable finding id, e.g. ``flash_attention/tflops/host/D=64,N=1024,causal=true``.

    The same arguments always give the same id (config keys are sorted), so re-running a bench
    replaces its own findings. Pass ``backend`` so results of the same configuration on different
    backends (host vs metal) are kept side by side instead of replacing each other.
    """
    parts = [proto, metric]
    if backend:
        parts.append(backend)
    if config:
        parts.append(",".join(f"{key}={_id_part(config[key])}" for key in sorted(config)))
    return "/".join(parts)


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def _parse(path: Path, lines: Sequence[str]) -> list[tuple[int, Finding]]:
    """(line number, finding) for every non-blank line; a bad line raises with ``path:line:``."""
    parsed: list[tuple[int, Finding]] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FindingError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        try:
            finding = Finding.from_dict(record)
        except FindingError as exc:
            raise FindingError(f"{path}:{number}: {exc}") from None
        if finding.id in first_line:
            raise FindingError(f"{path}:{number}: duplicate id {finding.id!r} "
                               f"(first on line {first_line[finding.id]})")
        first_line[finding.id] = number
        parsed.append((number, finding))
    return parsed


def load(path: str | os.PathLike[str] | None = None) -> list[Finding]:
    """Reads every finding of ``path`` (default :func:`default_path`), in file order.

    Raises ``FileNotFoundError`` for a missing file and :class:`FindingError` for a corrupt line,
    prefixed with the file and line number (``findings.jsonl:17: field 'kind': ...``).
    """
    path = Path(path) if path is not None else default_path()
    return [finding for _, finding in _parse(path, path.read_text(encoding="utf-8").splitlines())]


def _write_atomically(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text`` via a synced temporary file in the same directory."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 applies the umask like a plain open(); an existing file keeps its mode.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if path.exists():
                os.chmod(handle.fileno(), path.stat().st_mode & 0o777)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def emit_many(findings: Iterable[Finding], path: str | os.PathLike[str] | None = None) -> Path:
    """Adds ``findings`` to the file at ``path`` (default :func:`default_path`) in one atomic update.

    A finding whose id is already in the file replaces that line in place; new ids are appended in
    order (within ``findings``, the last of several with one id wins). Safe to call from several
    processes at once. Returns the path written. Refuses (:class:`FindingError`) to rewrite a file
    that already has a corrupt line, rather than dropping it.
    """
    path = Path(path) if path is not None else default_path()
    new: dict[str, str] = {}
    for finding in findings:
        if not isinstance(finding, Finding):
            raise TypeError(f"expected Finding objects, got {type(finding).__name__}")
        new[finding.id] = finding.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        lines = _read_lines(path)
        out = list(lines)
        for number, finding in _parse(path, lines):
            if finding.id in new:
                out[number - 1] = new.pop(finding.id)
        out = [line for line in out if line.strip()] + list(new.values())
        _write_atomically(path, "".join(line + "\n" for line in out))
    return path


def emit(finding: Finding, path: str | os.PathLike[str] | None = None) -> Path:
    """Adds one finding to the file (replacing the line with the same id); see :func:`emit_many`."""
    return emit_many([finding], path)


def select(
    findings: Iterable[Finding],
    proto: str | None = None,
    kind: str | None = None,
    backend: str | None = None,
    device_name: str | None = None,
) -> list[Finding]:
    """The findings matching every given filter.

    ``proto``, ``kind`` and ``backend`` match exactly; ``device_name`` matches a case-insensitive
    substring of ``device["name"]`` (``"M4"`` matches ``"Apple M4 Pro"``).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: unknown kind {kind!r} (expected one of: {', '.join(KINDS)})")
    needle = device_name.lower() if device_name is not None else None
    return [
        f for f in findings
        if (proto is None or f.proto == proto)
        and (kind is None or f.kind == kind)
        and (backend is None or f.device["backend"] == backend)
        and (needle is None or needle in f.device["name"].lower())
    ]


def is_apple_gpu(finding: Finding) -> bool:
    """True only for findings measured on the ``metal`` backend (an Apple GPU)."""
    return finding.device.get("backend") == "metal"


def is_cpu_result(finding: Finding) -> bool:
    """True for a performance finding measured off the Apple GPU (e.g. host backend timings)."""
    return finding.kind == "performance" and not is_apple_gpu(finding)


def device_label(device: Mapping[str, Any]) -> str:
    """A one-line description of where a number came from, for titles, tables and reports.

    ``"host backend · AMD EPYC 7B13 (CPU timings, not Apple GPU)"`` or
    ``"metal backend · Apple M4 (apple9)"``.
    """
    backend = device.get("backend") or "unknown"
    name = device.get("name") or "unknown device"
    if backend == "metal":
        family = device.get("family")
        return f"metal backend · {name}" + (f" ({family})" if family else "")
    if backend == "host":
        return f"host backend · {name} (CPU timings, not Apple GPU)"
    return f"{backend} backend · {name} (not Apple GPU)"


def measured_on(finding: Finding) -> str:
    """The "measured on" line of a finding: device label, package version and date."""
    return f"{device_label(finding.device)} · attention-proto {finding.version} · {finding.created}"


def group(findings: Iterable[Finding]) -> dict[str, dict[str, list[Finding]]]:
    """Findings grouped as ``{proto: {kind: [finding, ...]}}``, protos sorted, kinds in KINDS order."""
    grouped: dict[str, dict[str, list[Finding]]] = {}
    for finding in findings:
        grouped.setdefault(finding.proto, {}).setdefault(finding.kind, []).append(finding)
    return {
        proto: {kind: grouped[proto][kind] for kind in KINDS if kind in grouped[proto]}
        for proto in sorted(grouped)
    }


def split_apple_gpu(findings: Iterable[Finding]) -> tuple[list[Finding], list[Finding]]:
    """``(apple_gpu, other)``: findings from the metal backend, and all the rest.

    Summaries put only the first list under an "Apple GPU" heading; performance findings in the
    second are CPU (or other non-Apple) results and must be labelled so (:func:`is_cpu_result`).
    """
    apple: list[Finding] = []
    other: list[Finding] = []
    for finding in findings:
        (apple if is_apple_gpu(finding) else other).append(finding)
    return apple, other
