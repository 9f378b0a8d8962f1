"""Shards: a stable partition of the expanded inputs (hash of the path below its root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from audiotool.errors import UsageError
from audiotool.paths import expand_inputs
from audiotool.shards import Shard, parse_shard, select_shard, shard_from_env, shard_of


def _tree(root: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        p = root / f"d{i % 3}" / ("deep" if i % 2 else "") / f"f{i:02d}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")  # expansion only looks at names
        paths.append(p)
    return paths


def test_union_is_every_file_once(tmp_path: Path) -> None:
    _tree(tmp_path / "data", 23)
    inputs = expand_inputs([str(tmp_path / "data")])
    assert len(inputs.files) == 23
    for n in range(1, 6):
        parts = [select_shard(inputs, Shard(i, n)).files for i in range(n)]
        flat = [p for part in parts for p in part]
        assert sorted(flat) == sorted(inputs.files) and len(flat) == len(set(flat)) == 23
        if n > 1:
            assert max(len(p) for p in parts) < 23  # the hash does spread them


def test_adding_a_file_moves_no_other(tmp_path: Path) -> None:
    _tree(tmp_path / "data", 23)
    before = expand_inputs([str(tmp_path / "data")])
    (tmp_path / "data" / "d1" / "new.wav").write_bytes(b"")
    after = expand_inputs([str(tmp_path / "data")])
    for n in range(1, 6):
        for i in range(n):
            old = set(select_shard(before, Shard(i, n)).files)
            new = set(select_shard(after, Shard(i, n)).files)
            assert old <= new and len(new - old) <= 1


def test_key_is_relative_to_root_and_stable_across_runs(tmp_path: Path) -> None:
    _tree(tmp_path / "a" / "data", 5)
    _tree(tmp_path / "b" / "mnt" / "data", 5)
    ka = expand_inputs([str(tmp_path / "a" / "data")])
    kb = expand_inputs([str(tmp_path / "b" / "mnt" / "data")])
    assert sorted(ka.keys.values()) == sorted(kb.keys.values())
    assert "d1/deep/f01.wav" in ka.keys.values()
    code = "from audiotool.shards import shard_of; print(shard_of('d1/deep/f01.wav', 7))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).parents[1])},
    ).stdout  # fmt: skip
    assert int(out) == shard_of("d1/deep/f01.wav", 7)


def test_problems_go_to_one_shard(tmp_path: Path) -> None:
    _tree(tmp_path / "data", 3)
    inputs = expand_inputs([str(tmp_path / "data"), str(tmp_path / "missing.wav")])
    got = [len(select_shard(inputs, Shard(i, 3)).problems) for i in range(3)]
    assert sorted(got) == [0, 0, 1]


@pytest.mark.parametrize("value", ["3/2", "0/0", "2/2", "-1/2", "1-2", "x", "1/2/3"])
def test_bad_shard(value: str) -> None:
    with pytest.raises(UsageError):
        parse_shard(value)


def test_parse_shard() -> None:
    assert parse_shard(None) is None
    assert parse_shard(" 1 / 4 ") == Shard(1, 4)


def test_auto_from_env() -> None:
    s = parse_shard("auto", {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert s == Shard(5, 8, source="torchrun", local_rank=1)
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}
    assert shard_from_env(env) == Shard(2, 4, source="slurm")
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}).index == 3
    assert shard_from_env({}) == Shard(0, 1, source="single")
    with pytest.raises(UsageError):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "3"})
    with pytest.raises(UsageError):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "30", "SLURM_ARRAY_TASK_COUNT": "4"})
    with pytest.raises(UsageError):
        shard_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_auto_device_uses_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from audiotool.shards import auto_device

    torchrun = Shard(3, 8, source="torchrun", local_rank=3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert auto_device("auto", torchrun) == "cuda:3"
    assert auto_device("cpu", torchrun) == "cpu"
    assert auto_device("auto", Shard(0, 2)) == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_device("auto", torchrun) == "auto"
