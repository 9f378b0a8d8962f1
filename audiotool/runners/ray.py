"""``--engine ray``: run a batch's work items on a Ray cluster.

The driver (this process) plans the batch as for a local run (every output checked, shard and
``--resume`` applied); the items left to run become a Ray Dataset, one item per block, and
``map_batches`` sends them through a pool of ``workers`` actors (:class:`ItemWorker`). Each
actor calls the task's ``start(None)`` once (so the model is loaded once per worker, on the GPU
Ray assigned to it when ``gpus_per_worker > 0``), then
:func:`~audiotool.tasks._batch.run_item` per item: it writes the outputs itself, atomically,
into the output folder (which must therefore be on a file system every worker sees). Only the
per-file results travel back; the driver writes the manifest lines, draws the progress and
prints the same summary as a local run.

Ray restarts a dead actor and retries its call (Ray Data's defaults for actor pools:
``max_restarts=-1``, ``max_task_retries=-1``); a file whose worker died is processed again by
another one and, since results are only recorded on the driver, appears once in the manifest.
Outputs are checked for existence on the driver before dispatch, so workers replace a file a
dead worker may already have moved into place. A usage error in a worker (an option that
cannot work, a model that does not load) stops the batch on the driver with its message.

Ray is optional: ``pip install 'audiotool[ray]'``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audiotool.errors import UsageError

if TYPE_CHECKING:
    from audiotool.tasks._items import FileResult, OutputOptions, Runner, StartFn, WorkItem

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: pip install 'audiotool[ray]'"


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How to use the cluster.

    Attributes:
        address: ``ray.init`` address (``auto``, ``ray://head:10001``); None: the cluster this
            process is already connected to, else ``RAY_ADDRESS``, else a local one.
        workers: number of worker actors (each loads the model once).
        gpus_per_worker: GPUs reserved per worker (0: the workers run on CPUs).
        cpus_per_worker: CPUs reserved per worker.
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise UsageError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")


def require_ray() -> Any:
    """Import ray, or raise a usage error (exit 2) that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError(
            "--engine ray needs Ray, which is not installed", hint=INSTALL_HINT
        ) from None
    return ray


class ItemWorker:
    """A Ray Data actor: builds the task's process function once, then runs one item per row.

    Args:
        start: the task's picklable :data:`~audiotool.tasks._batch.StartFn`; called once, in
            the worker process, without progress bars.
        output: output options (the driver already applied the existing-output policy, so
            the worker writes over what a dead worker may have left).
        protect: the batch's inputs (never written over).
    """

    def __init__(self, start: StartFn, output: OutputOptions, protect: Sequence[str]) -> None:
        import dataclasses

        from audiotool.errors import AudiotoolError
        from audiotool.tasks._packing import per_file

        self.output = dataclasses.replace(output, overwrite=True, skip_existing=False)
        self.protect = [Path(p) for p in protect]
        self.fatal: dict[str, str | None] | None = None
        try:
            # file by file: a worker gets one item per call (no packing, no read-ahead)
            self.process = per_file(start(None))
        except AudiotoolError as exc:  # reported by the driver, not retried forever
            self.fatal = {"message": exc.message, "hint": exc.hint}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from audiotool.errors import UsageError
        from audiotool.tasks._items import WorkItem, run_one

        results = []
        for raw in batch["item"]:
            if self.fatal is not None:
                results.append(json.dumps({"fatal": self.fatal}))
                continue
            data = json.loads(str(raw))
            item = WorkItem(
                Path(data["input"]),
                {name: Path(t) for name, t in data["targets"].items()},
                key=data["key"],
            )
            try:
                result = run_one(item, self.process, output=self.output, protect=self.protect)
            except UsageError as exc:
                results.append(json.dumps({"fatal": {"message": exc.message, "hint": exc.hint}}))
                continue
            results.append(json.dumps({"result": result.to_json()}, default=str))
        return {"index": batch["index"], "result": np.array(results, dtype=object)}


def run_on_ray(
    start: StartFn,
    items: Sequence[WorkItem],
    *,
    output: OutputOptions,
    protect: Sequence[Path],
    options: RayOptions,
) -> Iterator[tuple[int, FileResult]]:
    """Run ``items`` on the cluster; yield ``(index in items, result)`` as they finish.

    Raises:
        UsageError: Ray is not installed, or a worker met a usage error (its message).
    """
    from audiotool.tasks._items import FileResult

    if not items:
        return
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=options.address, log_to_driver=False, include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    rows = [
        {
            "index": i,
            "item": json.dumps(
                {
                    "input": str(item.input),
                    "targets": {name: str(t) for name, t in item.targets.items()},
                    "key": item.key,
                }
            ),
        }
        for i, item in enumerate(items)
    ]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(
        ItemWorker,
        fn_constructor_args=(start, output, [str(p) for p in protect]),
        batch_size=1,
        batch_format="numpy",
        concurrency=options.workers,
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
    )
    for row in ds.iter_rows():
        data = json.loads(row["result"])
        if "fatal" in data:
            raise UsageError(data["fatal"]["message"], hint=data["fatal"]["hint"])
        yield int(row["index"]), FileResult(**data["result"])


def ray_runner(
    start: StartFn, *, output: OutputOptions, protect: Sequence[Path], options: RayOptions
) -> Runner:
    """A :data:`~audiotool.tasks._batch.Runner` for :func:`~audiotool.tasks._batch.drive`:
    items planned as skipped or failed are reported here, the rest run on the cluster."""
    from audiotool.tasks._items import no_process, run_one

    def run(items: Sequence[WorkItem]) -> Iterator[tuple[int, FileResult]]:
        remote: list[int] = []
        for i, item in enumerate(items):
            if item.skip or item.error is not None:
                yield i, run_one(item, no_process, output=output, protect=protect)
            else:
                remote.append(i)
        todo = [items[i] for i in remote]
        for j, result in run_on_ray(start, todo, output=output, protect=protect, options=options):
            yield remote[j], result

    return run
