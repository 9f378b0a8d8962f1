"""Many short files per forward (packing) and read-ahead: the same outputs as file by file.

Every test runs a batch twice through the library path the CLI uses — packed with read-ahead,
and with ``AUDIOTOOL_PACK=0`` (file by file, nothing read ahead) — on tiny random-weight models
of the bundled families, and compares the written files byte for byte (CPU, fp32).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotool.checkpoints import save_pretrained
from audiotool.paths import expand_inputs
from audiotool.tasks._batch import BatchReport, OutputOptions, RuntimeOptions

RT4 = RuntimeOptions(device="cpu", batch_size=4)


def _clip(path: Path, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    sf.write(
        path, (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype("float32"), rate
    )
    return path


def _both(
    run: Callable[[Path], BatchReport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[BatchReport, BatchReport, Path, Path]:
    """``run(out_dir)`` packed and file by file; their reports and output folders."""
    packed_dir, plain_dir = tmp_path / "packed", tmp_path / "plain"
    packed = run(packed_dir)
    monkeypatch.setenv("AUDIOTOOL_PACK", "0")
    plain = run(plain_dir)
    monkeypatch.delenv("AUDIOTOOL_PACK")
    return packed, plain, packed_dir, plain_dir


def _same_files(a: Path, b: Path) -> int:
    """The same files; byte-identical, except embeddings on more than one torch thread: the
    CPU matrix multiplies then round differently for 1 and 4 rows (measured: <= 2.4e-7), so
    their arrays must agree to 1e-6 (on one thread they are byte-identical too)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        if (a / f).read_bytes() == (b / f).read_bytes():
            continue
        assert f.suffix == ".npz" and torch.get_num_threads() > 1, f
        x, y = np.load(a / f), np.load(b / f)
        assert x.files == y.files, f
        for k in x.files:
            if x[k].dtype.kind == "f":
                np.testing.assert_allclose(x[k], y[k], atol=1e-6, rtol=0, err_msg=str(f))
            else:
                assert np.array_equal(x[k], y[k]), (f, k)
    return len(files)


def _same_results(packed: BatchReport, plain: BatchReport) -> None:
    """The same statuses, errors and details, in the same order; outputs by name."""

    def strip(report: BatchReport) -> list[tuple[str, str, list[str], str | None, dict]]:
        return [
            (r.input, r.status, [Path(o).name for o in r.outputs], r.error, r.details)
            for r in report.results
        ]

    assert strip(packed) == strip(plain)


@pytest.fixture
def forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of the packed forwards (the chunks of several files in one)."""
    from audiotool.engine import packing

    sizes: list[int] = []
    real = packing.forward

    def counting(model, batch, kwargs, device, dtype):  # type: ignore[no-untyped-def]
        sizes.append(int(batch.shape[0]))
        return real(model, batch, kwargs, device, dtype)

    monkeypatch.setattr(packing, "forward", counting)
    return sizes


# --------------------------------------------------------------------------- embed


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audiotool.models.audio_branch import PRESETS, build_model

    torch.manual_seed(0)
    cfg = PRESETS["tiny"]()
    return save_pretrained(build_model(cfg).eval(), cfg, tmp_path_factory.mktemp("m") / "emb")


def test_embed_packed_equals_file_by_file(
    tmp_path: Path, embed_dir: Path, monkeypatch: pytest.MonkeyPatch, forwards: list[int]
) -> None:
    from audiotool.tasks.embed import embed_files

    src = tmp_path / "in"
    src.mkdir()
    clips = [_clip(src / f"c{i}.wav", 0.6, 16000, seed=i) for i in range(6)]
    clips.append(_clip(src / "stereo_22k.wav", 0.6, 22050, channels=2, seed=9))
    (src / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    clips.insert(3, src / "broken.wav")

    def run(out: Path) -> BatchReport:
        return embed_files(
            expand_inputs([str(c) for c in clips]),
            model=str(embed_dir),
            output=OutputOptions(output=out),
            runtime=RT4,
        )

    packed, plain, a, b = _both(run, tmp_path, monkeypatch)
    _same_results(packed, plain)
    assert packed.counts() == {"ok": 7, "skipped": 0, "failed": 1}
    assert "broken.wav" in (packed.failed[0].error or "")  # its own one-line error
    assert _same_files(a, b) == 7
    assert 4 in forwards  # chunks of several files in one forward


def test_embed_combined_file_keeps_the_input_order(
    tmp_path: Path, embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiotool.tasks.embed import embed_files

    clips = [
        _clip(tmp_path / f"{n}.wav", 0.3 + 0.1 * (i % 2), 16000, seed=i)
        for i, n in enumerate("edcba")
    ]

    def run(out: Path) -> BatchReport:
        out.mkdir()
        return embed_files(
            expand_inputs([str(c) for c in clips]),
            model=str(embed_dir),
            output=OutputOptions(output=out / "all.npz"),
            runtime=RT4,
        )

    packed, plain, a, b = _both(run, tmp_path, monkeypatch)
    _same_results(packed, plain)
    assert _same_files(a, b) == 1
    assert list(np.load(a / "all.npz")["files"]) == [str(c) for c in clips]


# --------------------------------------------------------------------------- separate


@pytest.fixture(scope="module")
def separate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audiotool.models.separation import build_model, tiny_config

    torch.manual_seed(0)
    cfg = tiny_config()
    return save_pretrained(build_model(cfg).eval(), cfg, tmp_path_factory.mktemp("m") / "sep")


def test_separate_packed_equals_file_by_file(
    tmp_path: Path, separate_dir: Path, monkeypatch: pytest.MonkeyPatch, forwards: list[int]
) -> None:
    from audiotool.tasks.separate import SeparateOptions, separate_files

    src = tmp_path / "in"
    src.mkdir()
    clips = [_clip(src / f"s{i}.wav", 0.4, 44100, channels=2, seed=i) for i in range(5)]
    clips.insert(2, _clip(src / "mono.wav", 0.4, 44100, channels=1, seed=7))  # 2 groups
    clips.insert(4, _clip(src / "long.wav", 2.0, 22050, channels=2, seed=8))  # alone
    options = SeparateOptions(chunk_seconds=0.5, residual=True, stems=("vocals",))

    def run(out: Path) -> BatchReport:
        return separate_files(
            expand_inputs([str(c) for c in clips]),
            model=str(separate_dir),
            options=options,
            output=OutputOptions(output=out),
            runtime=RT4,
        )

    packed, plain, a, b = _both(run, tmp_path, monkeypatch)
    _same_results(packed, plain)
    assert packed.counts()["ok"] == len(clips)
    assert _same_files(a, b) == 2 * len(clips)
    assert 4 in forwards


def test_separate_per_file_query_is_carried_by_each_chunk(
    tmp_path: Path, embed_dir: Path, monkeypatch: pytest.MonkeyPatch, forwards: list[int]
) -> None:
    from audiotool.models.separation import build_model, tiny_config
    from audiotool.tasks.separate import SeparateOptions, separate_files

    torch.manual_seed(0)
    cfg = tiny_config().replace(query_dim=32, stems=("target",), query_source="mixture")
    sep = save_pretrained(build_model(cfg).eval(), cfg, tmp_path / "sep-q")
    clips = [_clip(tmp_path / f"q{i}.wav", 0.4, 44100, channels=2, seed=i) for i in range(4)]

    def run(out: Path) -> BatchReport:
        return separate_files(
            expand_inputs([str(c) for c in clips]),
            model=str(sep),
            options=SeparateOptions(chunk_seconds=0.5, query_model=str(embed_dir)),
            output=OutputOptions(output=out),
            runtime=RT4,
        )

    packed, plain, a, b = _both(run, tmp_path, monkeypatch)
    _same_results(packed, plain)
    assert _same_files(a, b) == 4
    assert forwards and max(forwards) == 4  # four files, four contexts, one forward
    outs = [sf.read(a / c.stem / "target.wav")[0] for c in clips]
    assert not np.array_equal(outs[0], outs[1])


def test_unpackable_schemes_keep_the_per_file_path(separate_dir: Path) -> None:
    from audiotool.tasks._packing import Packing
    from audiotool.tasks.separate import SeparateOptions, start_separator
    from audiotool.tasks.separate_ensemble import resolve_separators

    members, common = resolve_separators(
        str(separate_dir), revision=None, options=SeparateOptions()
    )
    plain = start_separator(members, common, common, SeparateOptions(), RT4, None)
    shifted = start_separator(members, common, common, SeparateOptions(shifts=1), RT4, None)
    assert isinstance(plain, Packing) and not isinstance(shifted, Packing)


# --------------------------------------------------------------------------- reconstruct


@pytest.mark.parametrize("family", ["rae", "codec"])
def test_reconstruct_packed_equals_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str, forwards: list[int]
) -> None:
    """The codec is packed; its convolutions take another oneDNN algorithm for another batch
    size, so the round trips agree to 2.4e-7 (2 LSB at 24 bits), not bit for bit. The RAE is
    not packed (its Griffin-Lim would amplify those differences): read ahead only, identical.
    """
    import importlib

    from safetensors.torch import load_file

    from audiotool.tasks.reconstruct import reconstruct_files

    mod = importlib.import_module(f"audiotool.models.{family}")
    torch.manual_seed(0)
    cfg = mod.PRESETS["tiny"]()
    model_dir = save_pretrained(mod.build_model(cfg).eval(), cfg, tmp_path / family)
    clips = [
        _clip(tmp_path / f"r{i}.wav", 0.5, 16000, channels=1 + i // 3, seed=i) for i in range(6)
    ]

    def run(out: Path) -> BatchReport:
        out.mkdir()
        return reconstruct_files(
            expand_inputs([str(c) for c in clips]),
            model=str(model_dir),
            latents_path=out / "lat.safetensors",
            output=OutputOptions(output=out),
            runtime=RT4,
        )

    packed, plain, a, b = _both(run, tmp_path, monkeypatch)
    # (safetensors writes the metadata in any order: the latents are compared as tensors)
    lat_a, lat_b = load_file(a / "lat.safetensors"), load_file(b / "lat.safetensors")
    assert list(lat_a) == list(lat_b)
    assert all(torch.equal(lat_a[k], lat_b[k]) for k in lat_a)  # whole-file encode, not packed
    (a / "lat.safetensors").unlink()
    (b / "lat.safetensors").unlink()
    if family == "rae":
        _same_results(packed, plain)  # the metrics too
        assert _same_files(a, b) == 6
        assert not forwards
        return
    assert forwards.count(3) == 2  # the mono files together, the stereo ones together
    assert [r.status for r in packed.results] == ["ok"] * 6
    for r, q in zip(packed.results, plain.results, strict=True):
        assert r.details == pytest.approx(q.details, abs=2e-3)
        x, y = sf.read(r.outputs[0])[0], sf.read(q.outputs[0])[0]
        np.testing.assert_allclose(x, y, rtol=0, atol=2.5e-7)  # 2 LSB at 24 bits


# --------------------------------------------------------------------------- the driver


def test_fail_fast_and_ctrl_c_stop_the_read_ahead(
    tmp_path: Path, embed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audiotool.tasks.embed as embed_task
    from audiotool.tasks._batch import BatchInterrupted

    clips = [_clip(tmp_path / f"f{i}.wav", 0.3, 16000, seed=i) for i in range(8)]
    broken = tmp_path / "f2.wav"
    broken.write_bytes(b"not audio")
    out = tmp_path / "out"
    report = embed_task.embed_files(
        expand_inputs([str(c) for c in clips]),
        model=str(embed_dir),
        output=OutputOptions(output=out, fail_fast=True),
        runtime=RT4,
    )
    assert [r.status for r in report.results] == ["ok", "ok", "failed"]
    assert sorted(p.name for p in out.iterdir()) == ["f0.npz", "f1.npz"]

    real, calls = embed_task._embedding, []

    def interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_task, "_embedding", interrupt)
    with pytest.raises(BatchInterrupted) as info:
        embed_task.embed_files(
            expand_inputs([str(c) for c in clips if c != broken]),
            model=str(embed_dir),
            output=OutputOptions(output=tmp_path / "out2"),
            runtime=RT4,
        )
    assert [r.status for r in info.value.report.results] == ["ok", "ok"]
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["f0.npz", "f1.npz"]
    assert not any(t.name == "audiotool-prefetch" and t.is_alive() for t in threading.enumerate())


def test_read_ahead_is_bounded_and_skips_long_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiotool.tasks._items import WorkItem
    from audiotool.tasks._prefetch import Prefetcher

    monkeypatch.setenv("AUDIOTOOL_STREAM_SECONDS", "1.0")
    items = [WorkItem(_clip(tmp_path / f"p{i}.wav", 0.2, 8000, seed=i)) for i in range(6)]
    items[3] = WorkItem(_clip(tmp_path / "long.wav", 1.5, 8000))
    items[4] = WorkItem(tmp_path / "missing.wav")
    seen: list[str] = []

    def prepare(item: WorkItem, audio: object) -> str:
        seen.append(item.input.name)
        return item.input.name

    with Prefetcher(items, prepare, ahead=2) as fetch:
        first = fetch.next()
        deadline = threading.Event()
        deadline.wait(0.5)  # the thread runs ahead, then waits for room
        assert len(seen) <= 4  # the one taken, two waiting, one read but not yet queued
        entries = [first] + [fetch.next() for _ in range(5)]
    assert [e.item for e in entries] == items
    assert entries[3].direct and entries[3].audio is None
    assert entries[4].error is not None
    with pytest.raises(Exception, match="no such file"):
        entries[4].read(items[4].input)
    assert entries[0].prepared == "p0.wav" and "long.wav" not in seen


def test_ray_workers_run_file_by_file() -> None:
    from audiotool.tasks._items import Produced, WorkItem
    from audiotool.tasks._packing import FileWork, Packing, per_file

    def process(item: WorkItem, audio: object) -> Produced:
        return Produced()

    packing = Packing(
        process,
        lambda i, a: None,
        lambda i, a, p: FileWork([], Produced),
        lambda x: x,
        4,
        torch.device("cpu"),
    )
    assert per_file(packing) is process and per_file(process) is process
    assert dataclasses.is_dataclass(packing)
