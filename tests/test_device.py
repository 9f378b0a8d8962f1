"""CPU thread count from affinity and cgroup quotas; device names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audiotool import device
from audiotool.device import available_cpus, check_device_name, set_threads
from audiotool.errors import UsageError


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def _cgroup(tmp_path: Path, files: dict[str, str], own: str = "0::/\n") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(own)
    return root, proc


def test_affinity_without_quota(tmp_path: Path, eight_cpus: None) -> None:
    root, proc = _cgroup(tmp_path, {"cpu.max": "max 100000\n"})
    assert available_cpus(cgroup_root=root, proc_cgroup=proc) == 8


def test_affinity_is_what_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(device.os, "cpu_count", lambda: 64)
    root, proc = _cgroup(tmp_path, {})
    assert available_cpus(cgroup_root=root, proc_cgroup=proc) == 2


def test_cgroup_v2_quota_rounds_up(tmp_path: Path, eight_cpus: None) -> None:
    root, proc = _cgroup(tmp_path, {"cpu.max": "150000 100000\n"})  # docker --cpus 1.5
    assert available_cpus(cgroup_root=root, proc_cgroup=proc) == 2


def test_cgroup_v2_own_group_first(tmp_path: Path, eight_cpus: None) -> None:
    root, proc = _cgroup(
        tmp_path,
        {"cpu.max": "max 100000\n", "job/cpu.max": "300000 100000\n"},
        own="0::/job\n",
    )
    assert available_cpus(cgroup_root=root, proc_cgroup=proc) == 3


def test_cgroup_v1_quota(tmp_path: Path, eight_cpus: None) -> None:
    files = {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path, files)
    assert available_cpus(cgroup_root=root, proc_cgroup=proc) == 1
    (root / "cpu/cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert available_cpus(cgroup_root=root, proc_cgroup=proc) == 8


def test_quota_never_below_one(tmp_path: Path, eight_cpus: None) -> None:
    root, proc = _cgroup(tmp_path, {"cpu.max": "10000 100000\n"})  # 0.1 CPU
    assert available_cpus(cgroup_root=root, proc_cgroup=proc) == 1


def test_set_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(device, "available_cpus", lambda: 1)
        assert set_threads(None) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert set_threads(None) == torch.get_num_threads()
        with pytest.raises(UsageError):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names(name: str) -> None:
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cpu:1", "auto:0", ""])
def test_bad_device_names(name: str) -> None:
    with pytest.raises(UsageError, match="cuda:N"):
        check_device_name(name)
