"""The run manifest: concurrent appends, strict reading, resume decisions, summaries."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from audiotool.manifest import (
    ManifestError,
    ManifestWriter,
    ResumeIndex,
    make_row,
    options_digest,
    read_manifest,
    summarize,
)


def test_digest_is_stable_and_order_free() -> None:
    a = options_digest({"steps": 10, "model": "zoo:x", "stems": ("a", "b"), "x": 2.0})
    b = options_digest({"x": 2, "stems": ["a", "b"], "model": "zoo:x", "steps": 10})
    assert a == b and len(a) == 16
    assert options_digest({"steps": 11, "model": "zoo:x"}) != options_digest(
        {"steps": 10, "model": "zoo:x"}
    )


def _append_many(path: str, who: int, n: int) -> None:
    with ManifestWriter(Path(path)) as w:
        for i in range(n):
            w.append(make_row(input=f"p{who}_{i}.wav" + "x" * 3000, status="ok", task="info"))


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), k, 40)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = read_manifest(path)
    assert len(rows) == 160 and len({r.input for r in rows}) == 160


def test_read_rejects_non_jsonl(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "status": "ok"}\nnot json\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl:2"):
        read_manifest(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(ManifestError):
        read_manifest(bad)
    with pytest.raises(ManifestError):
        read_manifest(tmp_path / "missing.jsonl")
    assert read_manifest(tmp_path / "missing.jsonl", missing_ok=True) == []
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"input": "a", "status": "ok"}\n{"input": "b", "sta')
    assert [r.input for r in read_manifest(torn)] == ["a"]


def test_resume_decision(tmp_path: Path) -> None:
    src = tmp_path / "a.wav"
    src.write_bytes(b"1234")
    out = tmp_path / "a_out.wav"
    out.write_bytes(b"x")
    row = make_row(input=str(src), status="ok", task="t", options="d1", outputs=[str(out)])
    index = ResumeIndex.from_rows([row])
    assert index.done(src, [out], "d1")
    assert not index.done(src, [out], "d2")  # a changed option redoes the file
    assert not index.done(src, [out, tmp_path / "other.wav"], "d1")  # an output is missing
    failed = make_row(input=str(src), status="failed", task="t", options="d1")
    assert not ResumeIndex.from_rows([row, failed]).done(src, [out], "d1")  # last row wins
    src.write_bytes(b"12345")  # the input changed
    assert not index.done(src, [out], "d1")


def test_summary(tmp_path: Path) -> None:
    rows = [
        make_row(input="a", status="failed", task="info", error="a: broken", seconds=1),
        make_row(input="a", status="ok", task="info", seconds=1),
        make_row(input="b", status="ok", task="info", seconds=2),
        make_row(input="c", status="failed", task="info", error="c: broken", hint="fix"),
    ]
    s = summarize(rows)
    assert (s.files, s.lines, s.counts) == (3, 4, {"ok": 2, "failed": 1})
    assert [r.input for r in s.failures] == ["c"] and s.compute_seconds == 4
    assert s.processes == 1 and s.tasks == ["info"]
    json.dumps(s.to_json())
