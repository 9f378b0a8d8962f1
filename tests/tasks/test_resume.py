"""--manifest / --resume on a real subprocess killed with SIGKILL half-way (separate-small)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


def _run(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "audiotool", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _lines(manifest: Path) -> list[dict[str, object]]:
    if not manifest.exists():
        return []
    return [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_sigkill_then_resume(write_wav: Callable[..., Path], tmp_path: Path) -> None:
    for i in range(12):
        write_wav(f"in/{'ab'[i % 2]}/c{i:02d}.wav", seconds=0.5, freq=220.0 + 30 * i, rate=22050)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    base = ["separate", str(tmp_path / "in"), "-o", str(out), "--manifest", str(manifest)]
    first = _run([*base, "--stems", "vocals", "--quiet"])
    deadline = time.monotonic() + 120
    while len(_lines(manifest)) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = {str(r["input"]) for r in _lines(manifest)}
    assert 3 <= len(done_before) < 12, "the first run must be killed half-way"
    # a half-written output of an unfinished input, as a kill during the write leaves it
    todo = sorted({str(p) for p in (tmp_path / "in").rglob("*.wav")} - done_before)
    stale = out / Path(todo[0]).stem / ".vocals.deadbeef.tmp.wav"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"partial")

    second = _run([*base, "--stems", "vocals", "--resume", "--json", "--quiet"])
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert report["counts"] == {"ok": 12 - len(done_before), "skipped": len(done_before),
                                "failed": 0}  # fmt: skip
    rows = _lines(manifest)
    ok = [r["input"] for r in rows if r["status"] == "ok"]
    assert len(ok) == len(set(ok)) == 12  # one ok line per file
    assert sorted(p.name for p in out.rglob("*")) == sorted(
        [f"c{i:02d}" for i in range(12)] + ["vocals.wav"] * 12
    )  # every output, no partial or temporary file
    assert len({r["options"] for r in rows}) == 1

    third = _run([*base, "--stems", "drums", "--resume", "--json", "--quiet"])
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stderr.decode()
    assert json.loads(stdout)["counts"] == {"ok": 12, "skipped": 0, "failed": 0}
    rows = _lines(manifest)
    assert len(rows) == 24 and len({r["options"] for r in rows}) == 2
    assert len(list(out.rglob("drums.wav"))) == 12
