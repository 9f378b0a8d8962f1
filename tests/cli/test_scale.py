"""At-scale options on the CLI: --shard, --manifest, --resume, --engine, manifest summary."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_app import run_main


@pytest.fixture
def clips(write_wav: Callable[..., Path], tmp_path: Path) -> Path:
    for i in range(7):
        write_wav(f"in/sub{i % 2}/c{i}.wav", seconds=0.1, freq=200.0 + 50 * i)
    return tmp_path / "in"


def test_info_shards_cover_all_and_write_manifest(
    clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    seen: list[str] = []
    for i in range(3):
        code, out, _ = run_main(
            ["info", str(clips), "--shard", f"{i}/3", "--manifest", str(manifest), "--json"],
            capsys,
        )
        assert code == 0
        data = json.loads(out)
        assert data["shard"] == f"{i}/3"
        seen += [f["input"] for f in data["files"]]
    assert len(seen) == len(set(seen)) == 7
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert sorted(r["input"] for r in lines) == sorted(seen)
    assert {r["shard"] for r in lines} == {"0/3", "1/3", "2/3"}
    assert all(r["status"] == "ok" and r["size"] > 0 and r["options"] for r in lines)
    code, out, _ = run_main(["manifest", "summary", str(manifest), "--json"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["files"] == 7 and summary["counts"]["ok"] == 7
    code, out, _ = run_main(["manifest", "summary", str(manifest)], capsys)
    assert code == 0 and "7 ok" in out


def test_resume_skips_done_info(
    clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    run_main(["info", str(clips), "--shard", "0/2", "--manifest", str(manifest)], capsys)
    first = len(manifest.read_text().splitlines())
    code, out, _ = run_main(
        ["info", str(clips), "--manifest", str(manifest), "--resume", "--json"], capsys
    )
    counts = json.loads(out)["counts"]
    assert code == 0 and counts == {"ok": 7 - first, "skipped": first, "failed": 0}
    assert len(manifest.read_text().splitlines()) == 7


def test_failures_reach_the_manifest_and_summary(
    clips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = clips / "bad.wav"
    bad.write_text("not audio")
    manifest = tmp_path / "m.jsonl"
    code, _, _ = run_main(["info", str(clips), "--manifest", str(manifest)], capsys)
    assert code == 1
    code, out, err = run_main(["manifest", "summary", str(manifest)], capsys)
    assert code == 1 and "1 failed" in out and "bad.wav" in err


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize(
    "args",
    [
        ["--shard", "3/2"],
        ["--shard", "0/0"],
        ["--shard", "one"],
        ["--resume"],
        ["--manifest", "{bad}"],
        ["--engine", "ray"],
        ["--workers", "2"],
    ],
)
@pytest.mark.parametrize("command", ["info", "separate"])
def test_bad_options_one_line_exit_2_nothing_written(
    command: str,
    args: list[str],
    clips: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_ray(monkeypatch)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not json\n")
    args = [a.replace("{bad}", str(bad)) for a in args]
    out_dir = tmp_path / "out"
    extra = ["-o", str(out_dir)] if command != "info" else []
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_main([command, str(clips), *extra, *args], capsys)
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("audiotool: error:"), err
    if "--engine" in args:
        assert "pip install 'audiotool[ray]'" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert bad.read_text() == "this is not json\n"


def test_manifest_summary_rejects_non_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text("{}\n")
    code, _, err = run_main(["manifest", "summary", str(bad)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run_main(["manifest", "summary", str(tmp_path / "none.jsonl")], capsys)
    assert code == 2


@pytest.mark.parametrize("scale", [["--engine", "ray"], ["--manifest", "{m}", "--resume"]])
@pytest.mark.parametrize(
    "command",
    [["embed", "-o", "{out}/all.npz"], ["reconstruct", "--latents", "{out}/l.safetensors"]],
)
def test_one_file_for_every_input_is_refused_at_scale(
    command: list[str],
    scale: list[str],
    clips: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "ray" in scale:
        pytest.importorskip("ray")
    out = tmp_path / "out"

    def fill(items: list[str]) -> list[str]:
        return [
            a.replace("{out}", str(out)).replace("{m}", str(tmp_path / "m.jsonl")) for a in items
        ]

    args = fill(command)
    if command[0] == "reconstruct":
        args += ["-o", str(out)]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_main([args[0], str(clips), *args[1:], *fill(scale)], capsys)
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "collects every input" in lines[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
