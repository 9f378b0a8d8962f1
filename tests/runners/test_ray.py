"""--engine ray on a local 2-CPU cluster: same bytes as a local run; a killed worker is retried."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'audiotool[ray]')")

from audiotool.audio import AudioData  # noqa: E402
from audiotool.paths import expand_inputs  # noqa: E402
from audiotool.progress import Progress  # noqa: E402
from audiotool.runners.ray import RayOptions  # noqa: E402
from audiotool.tasks._batch import (  # noqa: E402
    OutputOptions,
    ProcessFn,
    Produced,
    RuntimeOptions,
    ScaleOptions,
    StartFn,
    WorkItem,
    output_planner,
    run_files,
)
from audiotool.tasks.separate import (  # noqa: E402
    DEFAULT_TEMPLATE,
    SeparateOptions,
    check_options,
    separate_files,
    start_separator,
)
from audiotool.tasks.separate_ensemble import resolve_separators  # noqa: E402

pytestmark = pytest.mark.slow
OPTIONS = SeparateOptions(stems=("vocals", "drums"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    repo = str(Path(__file__).parents[2])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


@pytest.fixture
def ten(write_wav: Callable[..., Path], tmp_path: Path) -> Path:
    for i in range(10):
        write_wav(f"in/{i % 3}/c{i}.wav", seconds=0.4, freq=200.0 + 40 * i, channels=2)
    return tmp_path / "in"


def _bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.wav"))}


def test_ray_matches_local(cluster: None, ten: Path, tmp_path: Path) -> None:
    inputs = expand_inputs([str(ten)])
    local = separate_files(inputs, options=OPTIONS, output=OutputOptions(output=tmp_path / "local"))
    manifest = tmp_path / "ray.jsonl"
    scale = ScaleOptions(manifest=manifest, engine="ray", ray=RayOptions(workers=2))
    report = separate_files(
        inputs, options=OPTIONS, output=OutputOptions(output=tmp_path / "ray"), scale=scale
    )
    assert report.counts() == local.counts() == {"ok": 10, "skipped": 0, "failed": 0}
    assert [r.input for r in report.results] == [str(p) for p in inputs.files]  # input order
    assert (
        _bytes(tmp_path / "ray") == _bytes(tmp_path / "local")
        and len(_bytes(tmp_path / "ray")) == 20
    )
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in inputs.files)
    assert len({r["pid"] for r in rows}) == 1  # written by the driver
    # outputs exist now: the driver refuses them before dispatch, like a local run
    again = separate_files(
        inputs, options=OPTIONS, output=OutputOptions(output=tmp_path / "ray"), scale=scale
    )
    assert again.counts()["failed"] == 10 and "already exists" in str(again.failed[0].error)


def _dies_once(marker: str, victim: str, start: StartFn, progress: Progress | None) -> ProcessFn:
    """The separate process function, except that the worker that first meets ``victim`` is
    SIGKILLed."""
    inner = start(progress)

    def process(item: WorkItem, audio: AudioData) -> Produced:
        if item.input.name == victim:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return inner(item, audio)

    return process


def test_killed_worker_is_retried(cluster: None, ten: Path, tmp_path: Path) -> None:
    inputs = expand_inputs([str(ten)])
    out = OutputOptions(output=tmp_path / "ray")
    manifest = tmp_path / "m.jsonl"
    members, common = resolve_separators(None, revision=None, options=OPTIONS)
    names = check_options(members[0].config, OPTIONS, common)
    planner = output_planner(
        inputs, out, default_template=DEFAULT_TEMPLATE, default_dir=tmp_path,
        single_output=False, allowed_fields=frozenset({"track", "stem", "ext"}),
    )  # fmt: skip

    def targets(path: Path) -> dict[str, Path]:
        return {n: planner.path_for(path, track=path.stem, stem=n, ext="wav") for n in names}

    separate = functools.partial(start_separator, members, common, names, OPTIONS, RuntimeOptions())
    start = functools.partial(_dies_once, str(tmp_path / "killed"), "c4.wav", separate)
    scale = ScaleOptions(manifest=manifest, engine="ray", ray=RayOptions(workers=2))
    report = run_files(
        "separate", inputs, targets_for=targets, start=start, output=out, scale=scale
    )
    assert (tmp_path / "killed").exists()  # a worker did die
    assert report.counts() == {"ok": 10, "skipped": 0, "failed": 0}
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in inputs.files)
    assert all(r["status"] == "ok" for r in rows)
    assert len(list((tmp_path / "ray").rglob("*.wav"))) == 20
    assert not list((tmp_path / "ray").rglob(".*"))  # no temporaries
