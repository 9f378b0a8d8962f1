"""Compute device and precision selection."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from audiotool.errors import UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["fp32", "fp16", "bf16"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


def check_device_name(name: str) -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (no torch needed).

    Raises:
        UsageError: for anything else.
    """
    base, sep, index = name.partition(":")
    if base not in DEVICES or (sep and not (base == "cuda" and index.isdigit())):
        raise UsageError(
            f"--device must be one of auto, cpu, cuda, cuda:N (N = GPU index), mps; got {name!r}"
        )
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit device that is absent is an error.

    ``cuda:1`` style indices are accepted.
    """
    import torch

    base = check_device_name(name).partition(":")[0]
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available", hint="use --device cpu")
    if ":" in name and int(name.partition(":")[2]) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {name}: there are {torch.cuda.device_count()} CUDA GPU(s)",
            hint="GPU indices start at 0",
        )
    if base == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UsageError("--device mps: Apple MPS is not available", hint="use --device cpu")
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None for fp32).

    fp16 on the CPU is refused (slow or unsupported kernels); bf16 works on CPU and GPU.
    """
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type == "cpu":
            raise UsageError("--precision fp16 needs a GPU", hint="use bf16 or fp32 on the CPU")
        return torch.float16
    return torch.bfloat16


# --------------------------------------------------------------------------- CPU threads

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def available_cpus(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """How many CPUs this process may use: its affinity mask (``taskset``, cpusets), capped
    by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
    as docker ``--cpus`` and Kubernetes limits set them), rounded up; at least 1.

    ``os.cpu_count()`` (what torch's default thread count follows) sees neither limit, and
    more threads than CPUs makes every thread wait: with one other job on a 2-core machine an
    upsample took 4x longer with the default threads than with one.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def _cgroup_cpu_quota(root: Path, proc_cgroup: Path) -> float | None:
    """CPUs allowed by the cgroup quota, or None when unlimited or unknown."""
    v2 = [root / "cpu.max"]
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::") and line[3:].strip("/"):
                v2.insert(0, root / line[3:].strip("/") / "cpu.max")
    except OSError:
        pass
    for path in v2:
        fields = _read(path).split()
        if len(fields) == 2:
            return None if fields[0] == "max" else _ratio(fields[0], fields[1])
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota and period:
            return None if quota.strip() == "-1" else _ratio(quota, period)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count and return it.

    Args:
        threads: the count; None: :func:`available_cpus`, unless ``OMP_NUM_THREADS`` is set
            (then torch's own choice, which follows it, is kept).
    """
    import torch

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    n = threads if threads is not None else available_cpus()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.debug("torch uses %d CPU thread(s)", n)
    return n
