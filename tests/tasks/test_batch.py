"""The file-batch driver: plan first, model loaded lazily, all outputs of an input or none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf
import torch

from audiotool.audio import AudioData
from audiotool.errors import EngineError, UsageError
from audiotool.paths import expand_inputs
from audiotool.progress import Progress
from audiotool.tasks._batch import (
    BatchInterrupted,
    OutputOptions,
    ProcessFn,
    Produced,
    RunIdentity,
    ScaleOptions,
    WorkItem,
    execute,
    output_planner,
    plan_batch,
    run_files,
)


def _setup(
    tmp_path: Path, write_wav: Callable[..., Path], n: int = 2, **opts: object
) -> tuple[OutputOptions, Callable[[Path], dict[str, Path]], list[Path]]:
    paths = [write_wav(f"in/{i}.wav") for i in range(n)]
    output = OutputOptions(output=tmp_path / "out", **opts)  # type: ignore[arg-type]
    planner = output_planner(
        expand_inputs([str(p) for p in paths]),
        output,
        default_template="{stem}/{task}.{ext}",
        default_dir=tmp_path,
        single_output=False,
    )

    def targets(path: Path) -> dict[str, Path]:
        return {n: planner.path_for(path, task=n, ext="wav") for n in ("a", "b")}

    return output, targets, paths


def _halves(item: WorkItem, audio: AudioData) -> Produced:
    return Produced({"a": audio.samples / 2, "b": audio.samples / 2}, audio.sample_rate)


def test_plan_then_execute(tmp_path: Path, write_wav: Callable[..., Path]) -> None:
    output, targets, paths = _setup(tmp_path, write_wav)
    inputs = expand_inputs([str(p) for p in paths])
    plan = plan_batch("t", inputs, targets, output=output)
    assert [i.input for i in plan.items] == paths and plan.to_run == plan.items
    assert not (tmp_path / "out").exists()  # planning writes nothing
    report = execute(plan, _halves, output=output)
    assert report.counts() == {"ok": 2, "skipped": 0, "failed": 0}
    x, _ = sf.read(tmp_path / "out" / "0" / "a.wav")
    ref, _ = sf.read(paths[0])
    assert abs(x - ref / 2).max() < 1e-4


def test_model_not_loaded_when_everything_is_skipped(
    tmp_path: Path, write_wav: Callable[..., Path]
) -> None:
    output, targets, paths = _setup(tmp_path, write_wav, skip_existing=True)
    inputs = expand_inputs([str(p) for p in paths])
    started: list[int] = []

    def start(progress: Progress | None) -> ProcessFn:
        started.append(1)
        return _halves

    run_files("t", inputs, targets_for=targets, start=start, output=output)
    report = run_files("t", inputs, targets_for=targets, start=start, output=output)
    assert started == [1] and report.counts()["skipped"] == 2


def test_an_input_writes_all_its_outputs_or_none(
    tmp_path: Path, write_wav: Callable[..., Path]
) -> None:
    output, targets, paths = _setup(tmp_path, write_wav)
    inputs = expand_inputs([str(p) for p in paths])

    def only_a(item: WorkItem, audio: AudioData) -> Produced:
        if item.input == paths[0]:
            raise EngineError("model diverged")
        return Produced({"a": audio.samples, "b": audio.samples * float("nan")}, 16000)

    report = execute(plan_batch("t", inputs, targets, output=output), only_a, output=output)
    assert report.counts()["failed"] == 2
    assert "0.wav" in (report.results[0].error or "")
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []  # not a, no tmp


def test_usage_errors_stop_the_batch_and_ctrl_c_keeps_the_report(
    tmp_path: Path, write_wav: Callable[..., Path]
) -> None:
    output, targets, paths = _setup(tmp_path, write_wav, n=3)
    plan = plan_batch("t", expand_inputs([str(p) for p in paths]), targets, output=output)

    def bad_option(item: WorkItem, audio: AudioData) -> Produced:
        raise UsageError("--x is impossible")

    with pytest.raises(UsageError):
        execute(plan, bad_option, output=output)

    def stop_at_second(item: WorkItem, audio: AudioData) -> Produced:
        if item.input == paths[1]:
            raise KeyboardInterrupt
        return _halves(item, audio)

    with pytest.raises(BatchInterrupted) as exc:
        execute(plan, stop_at_second, output=output)
    report = exc.value.report
    assert report.interrupted and [r.input for r in report.results] == [str(paths[0])]
    assert report.to_json()["interrupted"] is True
    assert not (tmp_path / "out" / "1").exists()


def test_prepare_and_finish_round_trip() -> None:
    from audiotool.audio import finish, fit_length, prepare

    x = torch.randn(3, 1001)
    y = prepare(x, 16000, 44100, channels=2)
    assert y.shape == (2, 2760)  # ceil(1001 * 44100 / 16000)
    back = finish(y, 44100, 16000, 1001, channels=1, level_of=x)
    assert back.shape == (1, 1001) and back.device.type == "cpu"
    assert torch.allclose(back.pow(2).mean().sqrt(), x.pow(2).mean().sqrt(), rtol=1e-4)
    assert fit_length(torch.ones(1, 3), 5).tolist() == [[1, 1, 1, 0, 0]]
    import numpy as np

    assert fit_length(np.ones(4), 2).tolist() == [1, 1]


# --------------------------------------------------------------------------- at scale


def test_shards_plan_outputs_over_the_whole_batch(
    tmp_path: Path, write_wav: Callable[..., Path]
) -> None:
    from audiotool.manifest import read_manifest
    from audiotool.shards import Shard

    paths = [write_wav(f"in/{i}/x.wav") for i in range(4)]
    inputs = expand_inputs([str(tmp_path / "in")])
    output = OutputOptions(output=tmp_path / "out")
    planner = output_planner(inputs, output, default_template="{stem}.{ext}", default_dir=tmp_path)

    def clash(path: Path) -> dict[str, Path]:
        return {"a": planner.path_for(path, ext="wav")}  # every input writes out/x.wav

    for i in range(2):  # each shard sees the clash, even with the other input in another shard
        with pytest.raises(UsageError, match="would both write"):
            scale = ScaleOptions(shard=Shard(i, 2))
            run_files("t", inputs, targets_for=clash, start=_start, output=output, scale=scale)

    planner = output_planner(
        inputs, output, default_template="{parent}.{ext}", default_dir=tmp_path
    )
    plan = plan_batch("t", inputs, lambda p: {"a": planner.path_for(p, ext="wav")}, output=output)
    parts = [plan.for_shard(Shard(i, 3)) for i in range(3)]
    assert sorted(i.input for part in parts for i in part.items) == sorted(paths)
    assert all(sorted(part.inputs) == sorted(paths) for part in parts)  # all protected
    manifest = tmp_path / "m.jsonl"
    seen: list[str] = []
    for i in range(3):
        scale = ScaleOptions(shard=Shard(i, 3), manifest=manifest)
        report = run_files(
            "t", inputs, targets_for=lambda p: {"a": planner.path_for(p, ext="wav")},
            start=_start, output=output, scale=scale,
        )  # fmt: skip
        assert report.extra["shard"] == f"{i}/3"
        seen += [r.input for r in report.results]
    assert sorted(seen) == sorted(map(str, paths))
    rows = read_manifest(manifest)
    assert sorted(r.key or "" for r in rows) == [f"{i}/x.wav" for i in range(4)]
    assert {r.shard for r in rows} <= {"0/3", "1/3", "2/3"} and len(rows) == 4


def _start(progress: Progress | None) -> ProcessFn:
    return _halves


def test_resume_skips_done_removes_temporaries_and_redoes_changed(
    tmp_path: Path, write_wav: Callable[..., Path]
) -> None:
    output, targets, paths = _setup(tmp_path, write_wav, n=3)
    inputs = expand_inputs([str(p) for p in paths])
    manifest = tmp_path / "m.jsonl"
    first = ScaleOptions(manifest=manifest)
    run_files("t", inputs, targets_for=targets, start=_start, output=output, scale=first)
    (tmp_path / "out" / "1" / "b.wav").unlink()  # an output lost: input 1 is redone
    stale = tmp_path / "out" / "1" / ".a.k3x_9zq1.tmp.wav"  # a killed run's temporary
    other = tmp_path / "out" / "1" / ".a.notmine.wav"
    stale.write_bytes(b"partial")
    other.write_bytes(b"keep")
    resume = ScaleOptions(manifest=manifest, resume=True)
    started: list[int] = []

    def start(progress: Progress | None) -> ProcessFn:
        started.append(1)
        return _halves

    report = run_files("t", inputs, targets_for=targets, start=start, output=output, scale=resume)
    assert report.counts() == {"ok": 1, "skipped": 2, "failed": 0} and started == [1]
    assert [r.details.get("resumed", False) for r in report.results] == [True, False, True]
    assert not stale.exists() and other.exists()
    # everything done now: the model is not even loaded
    run_files("t", inputs, targets_for=targets, start=start, output=output, scale=resume)
    assert started == [1]
    # another options digest redoes every file, over the old outputs
    report = run_files(
        "t", inputs, targets_for=targets, start=start, output=output, scale=resume,
        identity=lambda: RunIdentity(options="other"),
    )  # fmt: skip
    assert report.counts()["ok"] == 3 and started == [1, 1]


def test_resume_needs_a_manifest() -> None:
    with pytest.raises(UsageError, match="--manifest"):
        ScaleOptions(resume=True)
