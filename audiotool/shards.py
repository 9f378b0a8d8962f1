"""Stable partition of a batch's inputs into N shards (``--shard I/N`` and ``--shard auto``).

Each input goes to shard ``H(key) mod N``, where ``key`` is its path relative to its root (the
folder it was found in, see :attr:`audiotool.paths.ExpandedInputs.keys`) and ``H`` is the first
8 bytes of its SHA-1 (stable across Python runs and machines, unlike ``hash()``). So:

- the shards of one input list never overlap and together hold every file exactly once;
- adding or removing a file never moves another file to a different shard;
- machines that mount the data under different prefixes agree on the partition.

``--shard auto`` reads the launcher's environment: torchrun (``RANK`` / ``WORLD_SIZE``, and
``LOCAL_RANK`` picks ``cuda:LOCAL_RANK``) or a SLURM job array (``SLURM_ARRAY_TASK_ID``,
``SLURM_ARRAY_TASK_COUNT``, ``SLURM_ARRAY_TASK_MIN``; arrays with a step, ``0-30:2``, are not
supported: the task ids must be contiguous). Without either, ``auto`` is the single shard 0/1.

No torch here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Mapping

from audiotool.errors import UsageError
from audiotool.paths import ExpandedInputs

log = logging.getLogger(__name__)

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), and where it came from.

    Attributes:
        index: this process's shard, ``0 <= index < count``.
        count: number of shards.
        source: ``"option"`` (``--shard I/N``), ``"torchrun"``, ``"slurm"`` or ``"single"``.
        local_rank: torchrun's ``LOCAL_RANK`` (the GPU of this process on its node), if any.
    """

    index: int
    count: int
    source: str = "option"
    local_rank: int | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UsageError(f"--shard needs at least one shard, got {self.index}/{self.count}")
        if not 0 <= self.index < self.count:
            raise UsageError(
                f"--shard {self.index}/{self.count}: the index must be in 0..{self.count - 1}",
                hint="shards are numbered from 0, e.g. --shard 0/4 ... --shard 3/4",
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        """True when the input named ``key`` belongs to this shard."""
        return shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard (``0..count-1``) of an input key: SHA-1 of the key, first 8 bytes, mod count."""
    digest = hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(value: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """Parse ``--shard``: None (no sharding), ``I/N``, or ``auto`` (from ``env``).

    Raises:
        UsageError: not ``I/N`` or ``auto``, an index outside ``0..N-1``, ``N < 1``, or
            inconsistent launcher variables.
    """
    if value is None:
        return None
    if value.strip().lower() == "auto":
        return shard_from_env(os.environ if env is None else env)
    match = _SHARD_RE.match(value)
    if not match:
        raise UsageError(
            f"--shard must be I/N (e.g. 0/4) or 'auto', got {value!r}",
            hint="shard I of N, counting from 0",
        )
    return Shard(int(match.group(1)), int(match.group(2)))


def _int_var(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"--shard auto: {name}={raw!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str]) -> Shard:
    """The shard a launcher assigned to this process (torchrun first, then a SLURM array)."""
    rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
    if rank is not None and world is not None:
        return Shard(rank, world, source="torchrun", local_rank=_int_var(env, "LOCAL_RANK"))
    task_id = _int_var(env, "SLURM_ARRAY_TASK_ID")
    if task_id is not None:
        count = _int_var(env, "SLURM_ARRAY_TASK_COUNT")
        if count is None:
            raise UsageError(
                "--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not",
                hint="run as a job array (sbatch --array=0-N) or give --shard I/N",
            )
        first = _int_var(env, "SLURM_ARRAY_TASK_MIN") or 0
        index = task_id - first
        if not 0 <= index < count:
            raise UsageError(
                f"--shard auto: SLURM array task {task_id} (min {first}, count {count}) does "
                "not map to a shard",
                hint="use a contiguous array without a step (--array=0-N), or --shard I/N",
            )
        return Shard(index, count, source="slurm")
    log.info("--shard auto: no torchrun or SLURM array variables; running every input")
    return Shard(0, 1, source="single")


def auto_device(device: str, shard: Shard | None) -> str:
    """Under torchrun, ``--device auto`` (or ``cuda``) becomes ``cuda:LOCAL_RANK`` on CUDA."""
    if shard is None or shard.local_rank is None or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    count = torch.cuda.device_count()
    return f"cuda:{shard.local_rank % count}" if count else device


def select_shard(inputs: ExpandedInputs, shard: Shard | None) -> ExpandedInputs:
    """The part of ``inputs`` that belongs to ``shard`` (all of it when ``shard`` is None).

    Files are assigned by their key (path relative to their root); unusable command-line items
    (``problems``, ``ignored``) by the item as given, so each is reported by exactly one shard.
    """
    if shard is None or shard.count == 1:
        return inputs
    files = [p for p in inputs.files if shard.owns(inputs.key(p))]
    return ExpandedInputs(
        files=files,
        problems=[(item, err) for item, err in inputs.problems if shard.owns(item)],
        ignored=[item for item in inputs.ignored if shard.owns(item)],
        keys={p: inputs.key(p) for p in files},
    )
