"""The run manifest (``--manifest FILE.jsonl``), resume decisions and manifest summaries.

One JSON object per line, one line per finished input (ok or failed)::

    {"input": "in/a.wav", "path": "/data/in/a.wav", "key": "a.wav", "size": 88244,
     "mtime": 1718000000.0, "task": "upsample", "outputs": ["out/a_upsample.wav"],
     "model": "zoo:upsample-tiny", "revision": "audiotool-0.4.0", "options": "3f1c...",
     "status": "ok", "error": null, "hint": null, "seconds": 8.81,
     "finished": 1718000012.3, "host": "node7", "pid": 4242, "shard": "3/8"}

``options`` is :func:`options_digest` of everything that changes the output (task options,
model and revision, seed, precision, audio format), so ``--resume`` redoes a file when one of
them changed. Lines are appended by :class:`ManifestWriter` with one ``write`` on a descriptor
opened with ``O_APPEND`` while holding an exclusive ``fcntl`` lock: several processes (shards,
nodes on a shared file system) can append to one file without interleaving.

No torch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from audiotool.errors import UsageError

log = logging.getLogger(__name__)

#: manifest fields, in the order they are written
FIELDS = (
    "input", "path", "key", "size", "mtime", "task", "outputs", "model", "revision", "options",
    "status", "error", "hint", "seconds", "finished", "host", "pid", "shard",
)  # fmt: skip


class ManifestError(UsageError):
    """A manifest that cannot be read or written (not JSON lines, missing, unwritable)."""


# --------------------------------------------------------------------------- digest


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 2.0 and 2 are the same option value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def options_digest(options: Mapping[str, Any]) -> str:
    """A short stable digest (16 hex digits of SHA-256) of the options that change the output.

    ``options`` may hold dataclasses, paths, tuples and nested mappings; key order does not
    matter. Two runs whose digests differ may produce different outputs for the same input.
    """
    text = json.dumps(_canonical(dict(options)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- rows


@dataclasses.dataclass
class ManifestRow:
    """One line of a manifest (see the module docstring)."""

    input: str
    status: str
    path: str | None = None
    key: str | None = None
    size: int | None = None
    mtime: float | None = None
    task: str | None = None
    outputs: list[str] = dataclasses.field(default_factory=list)
    model: str | None = None
    revision: str | None = None
    options: str | None = None
    error: str | None = None
    hint: str | None = None
    seconds: float = 0.0
    finished: float = 0.0
    host: str | None = None
    pid: int | None = None
    shard: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: data[k] for k in FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestRow:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def input_stat(path: Path) -> tuple[int | None, float | None]:
    """(size in bytes, mtime) of an input, or (None, None) when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None, None
    return st.st_size, st.st_mtime


def make_row(
    *,
    input: str,
    status: str,
    task: str,
    outputs: Sequence[str] = (),
    key: str | None = None,
    model: str | None = None,
    revision: str | None = None,
    options: str | None = None,
    error: str | None = None,
    hint: str | None = None,
    seconds: float = 0.0,
    shard: str | None = None,
) -> ManifestRow:
    """A row for ``input`` with its current size / mtime, host, pid and finish time."""
    path = Path(input)
    size, mtime = input_stat(path)
    return ManifestRow(
        input=input,
        path=str(path.resolve()) if size is not None else None,
        key=key,
        size=size,
        mtime=mtime,
        task=task,
        outputs=list(outputs),
        model=model,
        revision=revision,
        options=options,
        status=status,
        error=error,
        hint=hint,
        seconds=round(float(seconds), 3),
        finished=round(time.time(), 3),
        host=socket.gethostname(),
        pid=os.getpid(),
        shard=shard,
    )


# --------------------------------------------------------------------------- writing


if sys.platform != "win32":
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_EX)

    def _unlock(fd: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN)

else:  # pragma: no cover - O_APPEND alone on Windows

    def _lock(fd: int) -> None:
        return None

    def _unlock(fd: int) -> None:
        return None


class ManifestWriter:
    """Appends rows to a manifest, one locked ``write`` per line (safe across processes).

    The file is opened once with ``O_APPEND``; each :meth:`append` takes an exclusive POSIX
    lock (``fcntl.lockf``, which also works on NFS with a lock daemon), writes the whole line in
    one ``os.write`` and releases the lock. Nothing is buffered in the process: a killed run
    leaves only whole lines.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ManifestError(f"--manifest {self.path} is a folder", hint="name a .jsonl file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ManifestError(
                f"cannot open the manifest {self.path}: {exc.strerror or exc}",
                hint="check the path and its permissions",
            ) from exc

    def append(self, row: ManifestRow) -> None:
        """Write ``row`` as one line."""
        if self._fd is None:
            raise ManifestError(f"the manifest {self.path} is closed")
        data = (json.dumps(row.to_json(), default=str, ensure_ascii=False) + "\n").encode()
        _lock(self._fd)
        try:
            view = memoryview(data)
            while view:  # one write for any sane line; loop only on a short write
                written = os.write(self._fd, view)
                view = view[written:]
        finally:
            _unlock(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- reading


def read_manifest(path: Path, *, missing_ok: bool = False) -> list[ManifestRow]:
    """Parse a manifest.

    A last line without its newline that is not valid JSON (a writer killed by a full disk) is
    skipped with a warning; any other line that is not a JSON object with ``input`` and
    ``status`` is an error.

    Raises:
        ManifestError: the file is missing (unless ``missing_ok``), unreadable, or not JSONL.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise ManifestError(f"manifest {path} does not exist", hint="check the path") from None
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc.strerror or exc}") from exc
    rows: list[ManifestRow] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict) or "input" not in obj or "status" not in obj:
                raise ValueError("not a manifest row")
            rows.append(ManifestRow.from_json(obj))
        except (ValueError, TypeError, UnicodeDecodeError):
            if number == len(lines):  # no newline after it: an interrupted last write
                log.warning("%s: ignoring the unfinished last line %d", path, number)
                continue
            raise ManifestError(
                f"{path}:{number} is not a manifest line (JSON object with input and status)",
                hint="--manifest takes a JSON-lines file written by audiotool --manifest",
            ) from None
    return rows


# --------------------------------------------------------------------------- resume


@dataclasses.dataclass
class ResumeIndex:
    """The last manifest row of each input, for ``--resume``."""

    last: dict[str, ManifestRow] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[ManifestRow]) -> ResumeIndex:
        index = cls()
        for row in rows:
            index.last[row.path or str(Path(row.input).resolve())] = row
        return index

    @classmethod
    def load(cls, path: Path) -> ResumeIndex:
        return cls.from_rows(read_manifest(path, missing_ok=True))

    def done(self, input_path: Path, outputs: Iterable[Path], digest: str) -> bool:
        """True when ``input_path`` needs no work.

        That is: its last row is ``ok`` with the same options digest, the input's size and
        mtime are unchanged, and every planned output exists. A changed option, a changed
        input, a failed or missing row, or a missing output redoes the file.
        """
        row = self.last.get(str(input_path.resolve()))
        if row is None or row.status != "ok" or row.options != digest:
            return False
        size, mtime = input_stat(input_path)
        if (row.size, row.mtime) != (size, mtime):
            return False
        return all(Path(p).exists() for p in outputs)


# --------------------------------------------------------------------------- summary


@dataclasses.dataclass
class ManifestSummary:
    """Counts, failures and throughput over one or more manifests.

    Attributes:
        files: inputs seen (each counted once, by its last row).
        lines: rows read (attempts, including retries and reruns).
        counts: status of each input's last row -> number of inputs.
        failures: the last row of each input that is still failed.
        compute_seconds: sum of per-input seconds over all rows.
        wall_seconds: from the first input's start to the last finish.
        files_per_hour: ok inputs per wall-clock hour.
        processes: distinct (host, pid) pairs that wrote rows.
        tasks, models: distinct task names and model ids.
    """

    files: int
    lines: int
    counts: dict[str, int]
    failures: list[ManifestRow]
    compute_seconds: float
    wall_seconds: float
    files_per_hour: float | None
    processes: int
    tasks: list[str]
    models: list[str]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["failures"] = [
            {"input": r.input, "error": r.error, "hint": r.hint} for r in self.failures
        ]
        return data


def summarize(rows: Sequence[ManifestRow]) -> ManifestSummary:
    """Summarize manifest rows (from one or several files)."""
    last: dict[str, ManifestRow] = {}
    for row in rows:
        last[row.path or row.input] = row
    counts: dict[str, int] = {"ok": 0, "failed": 0}
    for row in last.values():
        counts[row.status] = counts.get(row.status, 0) + 1
    starts = [r.finished - r.seconds for r in rows if r.finished]
    ends = [r.finished for r in rows if r.finished]
    wall = (max(ends) - min(starts)) if ends else 0.0
    ok = counts.get("ok", 0)
    return ManifestSummary(
        files=len(last),
        lines=len(rows),
        counts=counts,
        failures=[r for r in last.values() if r.status == "failed"],
        compute_seconds=round(sum(r.seconds for r in rows), 3),
        wall_seconds=round(wall, 3),
        files_per_hour=round(ok * 3600 / wall, 1) if wall > 0 else None,
        processes=len({(r.host, r.pid) for r in rows}),
        tasks=sorted({r.task for r in rows if r.task}),
        models=sorted({r.model for r in rows if r.model}),
    )


@contextlib.contextmanager
def optional_writer(path: Path | None) -> Iterator[ManifestWriter | None]:
    """A :class:`ManifestWriter` for ``path``, or None when no manifest was asked for."""
    if path is None:
        yield None
        return
    with ManifestWriter(path) as writer:
        yield writer
