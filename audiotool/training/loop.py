"""A plain PyTorch training loop: AMP, gradient clipping, EMA, checkpoint + exact resume,
validation, JSONL logs, DDP, and a zoo-format export with a model card.

Batches are drawn *step-indexed*: batch ``s`` of rank ``r`` comes from a generator seeded with
``(seed, s, r)``, so a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from audiotool.errors import UsageError
from audiotool.models._config import ModelConfig
from audiotool.paths import replace_atomically, write_text_atomically
from audiotool.progress import NullProgress, Progress
from audiotool.training import distributed as dist_utils
from audiotool.training.recipe import Recipe, TrainSection

if TYPE_CHECKING:
    from audiotool.training.adapters import TaskAdapter

log = logging.getLogger(__name__)

EVAL_MARKER = "<!-- evaluation -->"
STATE_FILE = "train_state.pt"
BEST_FILE = "best.safetensors"


class EMA:
    """Exponential moving average of a model's float parameters and buffers.

    ``decay_t = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the warm-up of
    Tarvainen & Valpola 2017 / LDM's LitEma), so early averages are not dominated by the
    random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {
            k: v.detach().clone().float()
            for k, v in model.state_dict().items()
            if v.dtype.is_floating_point
        }

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor], updates: int) -> None:
        """Restore the shadow (moved to the device of the current shadow) and update count."""
        dev = {k: v.device for k, v in self.shadow.items()}
        self.shadow = {k: v.to(dev.get(k, v.device)).clone().float() for k, v in state.items()}
        self.updates = updates

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``model``."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        own = model.state_dict()
        model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in self.shadow.items()}})
        try:
            yield
        finally:
            model.load_state_dict(backup)


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    steps: int
    wall_seconds: float
    final_metrics: dict[str, float]
    best_metric: float | None


def _lr_factor(step: int, recipe: Recipe) -> float:
    t = recipe.train
    if step < t.warmup_steps:
        return (step + 1) / max(1, t.warmup_steps)
    if t.lr_schedule == "constant":
        return 1.0
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _step_seed(seed: int, step: int, rank: int) -> int:
    return ((seed * 1_000_003 + step) * 1009 + rank) % (2**63)


def _batch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(_step_seed(seed, step, rank))


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    replace_atomically(path, lambda tmp: save_file(cpu, str(tmp)))


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (x{dist_utils.world_size()})"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"CPU: {cpu}, {torch.get_num_threads()} threads x {dist_utils.world_size()} process(es)"


@dataclasses.dataclass
class TrainState:
    """What a checkpoint holds: the model, its optimiser, scheduler, scaler and EMA, the number
    of steps done, the best validation value so far and the wall time of earlier sessions."""

    model: nn.Module
    trainable: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: EMA | None
    step: int = 0
    best: float | None = None
    wall_before: float = 0.0


def _new_state(
    recipe: Recipe,
    config: ModelConfig,
    build: Callable[[ModelConfig], nn.Module],
    device: torch.device,
) -> TrainState:
    """A fresh model (seeded with ``train.seed``) with its optimiser, scheduler, scaler, EMA.

    Raises:
        UsageError: no trainable parameters, or fp16 AMP without CUDA.
    """
    t = recipe.train
    torch.manual_seed(t.seed)
    model = build(config).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UsageError("the model has no trainable parameters")
    opt = torch.optim.AdamW(trainable, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
    if t.amp == "fp16" and device.type != "cuda":
        raise UsageError("amp fp16 needs a CUDA device", hint="use amp: bf16 or none on the CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp == "fp16")
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    return TrainState(model, trainable, opt, sched, scaler, ema)


def _resume_or_prepare(
    state: TrainState,
    adapter: TaskAdapter,
    ckpt_dir: Path,
    *,
    resume: bool,
    ema_decay: float,
    device: torch.device,
) -> None:
    """Load the checkpoint in ``ckpt_dir`` when ``resume`` and one exists; else let the adapter
    prepare the fresh model (and start the EMA from the prepared weights)."""
    state_path = ckpt_dir / STATE_FILE
    if not (resume and state_path.is_file()):
        adapter.prepare(state.model)
        if state.ema is not None:
            state.ema = EMA(state.model, ema_decay)
        return
    saved = torch.load(state_path, map_location="cpu", weights_only=True)
    state.model.load_state_dict(load_file(str(ckpt_dir / saved["model_file"]), device=str(device)))
    state.opt.load_state_dict(saved["optimizer"])
    state.sched.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    if state.ema is not None and saved["ema_file"]:
        state.ema.load_state_dict(
            load_file(str(ckpt_dir / saved["ema_file"]), device=str(device)),
            int(saved["ema_updates"]),
        )
    state.step, state.best = int(saved["step"]), saved.get("best")
    state.wall_before = float(saved["wall"])
    log.info("resumed at step %d", state.step)


def _train_step(
    state: TrainState, adapter: TaskAdapter, t: TrainSection, *, rank: int, device: torch.device
) -> tuple[Tensor, float, dict[str, float]]:
    """One optimiser step on the step-indexed batch; returns (loss, grad norm, loss parts)."""
    state.model.train()
    gen = _batch_generator(t.seed, state.step, rank)
    # the global RNGs (nn.Dropout, torch.rand without a generator) are step-indexed too,
    # so a resumed run repeats the uninterrupted run's random draws exactly
    torch.manual_seed(_step_seed(t.seed, state.step, rank) ^ 0x5EED)
    batch = adapter.train_batch(state.step, rank, t.batch_size, gen)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]
    with (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype
        else contextlib.nullcontext()
    ):
        loss, parts = adapter.loss(state.model, batch, gen)
    state.opt.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    dist_utils.average_gradients(state.trainable)
    state.scaler.unscale_(state.opt)
    max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.trainable, max_norm))
    state.scaler.step(state.opt)
    state.scaler.update()
    state.sched.step()
    state.step += 1
    if state.ema is not None and state.step > t.ema_start:
        state.ema.update(state.model)
    return loss, grad_norm, parts


def _validate_and_keep_best(
    state: TrainState, adapter: TaskAdapter, ckpt_dir: Path, max_batches: int
) -> dict[str, float]:
    """Validate (with the EMA weights when there are some); a new best ``adapter.best_metric``
    (in ``adapter.higher_is_better``'s direction) writes those weights to ``best.safetensors``.

    Raises:
        UsageError: the adapter's ``best_metric`` is not among its validation metrics.
    """
    metrics = _validate(state.model, adapter, state.ema, max_batches)
    if not metrics:
        return metrics
    if adapter.best_metric not in metrics:
        raise UsageError(
            f"the {adapter.name} adapter's best_metric {adapter.best_metric!r} is not one of "
            f"its validation metrics {sorted(metrics)}",
            hint="set the adapter's best_metric to one of them",
        )
    value = metrics[adapter.best_metric]
    best = state.best
    if best is None or (value > best if adapter.higher_is_better else value < best):
        state.best = value
        weights = state.ema.state_dict() if state.ema else state.model.state_dict()
        _save_tensors(weights, ckpt_dir / BEST_FILE)
    return metrics


def _save_checkpoint(state: TrainState, ckpt_dir: Path, wall: float) -> None:
    """Weights go to step-named files first; ``train_state.pt`` (written atomically, last)
    names them, so a run killed at any point resumes from a consistent set. Older weight
    files are removed afterwards."""
    model_file = f"model-{state.step:08d}.safetensors"
    ema_file = f"ema-{state.step:08d}.safetensors"
    _save_tensors(state.model.state_dict(), ckpt_dir / model_file)
    if state.ema is not None:
        _save_tensors(state.ema.state_dict(), ckpt_dir / ema_file)
    saved = {
        "step": state.step,
        "model_file": model_file,
        "ema_file": ema_file if state.ema is not None else "",
        "optimizer": state.opt.state_dict(),
        "scheduler": state.sched.state_dict(),
        "scaler": state.scaler.state_dict(),
        "ema_updates": state.ema.updates if state.ema else 0,
        "best": state.best,
        "wall": wall,
    }
    replace_atomically(ckpt_dir / STATE_FILE, lambda tmp: torch.save(saved, tmp))
    keep = {model_file, ema_file}
    for old in [*ckpt_dir.glob("model-*.safetensors"), *ckpt_dir.glob("ema-*.safetensors")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)


def _step_record(
    step: int, loss: Tensor, grad_norm: float, parts: dict[str, float], lr: float
) -> dict[str, Any]:
    return {
        "step": step,
        "loss": round(float(loss.detach()), 6),
        "lr": lr,
        "grad_norm": round(grad_norm, 4),
        **{k: round(v, 6) for k, v in parts.items()},
    }


def _emit(
    path: Path, record: dict[str, Any], on_log: Callable[[dict[str, Any]], None] | None
) -> None:
    """Append ``record`` to the JSONL log, log it, and pass it to ``on_log``."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    log.info("%s", record)
    if on_log is not None:
        on_log(record)


def _export_final(
    state: TrainState,
    adapter: TaskAdapter,
    recipe: Recipe,
    config: ModelConfig,
    out_dir: Path,
    wall: float,
    last_val: dict[str, float],
    device: torch.device,
    command: str | None,
) -> dict[str, float]:
    """Write the zoo folder with the EMA weights (when there are some) swapped in; the card's
    metrics are the last validation's, or, when none ran, a validation of those same weights.
    Returns the metrics."""
    with state.ema.swapped_in(state.model) if state.ema is not None else contextlib.nullcontext():
        final = last_val or _validate(state.model, adapter, None, recipe.train.val_batches)
        export(
            state.model,
            config,
            recipe,
            adapter,
            out_dir=out_dir,
            steps=state.step,
            wall=wall,
            metrics=final,
            device=device,
            command=command,
        )
    return final


def train(
    recipe: Recipe,
    adapter: TaskAdapter,
    *,
    build: Callable[[ModelConfig], nn.Module],
    out_dir: Path,
    device: torch.device,
    resume: bool = True,
    progress: Progress | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    max_steps: int | None = None,
    time_limit_s: float | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train ``recipe`` with ``adapter``; write checkpoints and, at the end, a zoo folder.

    Args:
        build: makes the model from the recipe's config.
        out_dir: the zoo folder to write (checkpoints under ``out_dir/checkpoints``).
        resume: continue from ``out_dir/checkpoints`` when present.
        max_steps / time_limit_s: stop early (a checkpoint is written), e.g. to fit a session;
            rerun with the same arguments to continue.
    """
    t = recipe.train
    progress = progress or NullProgress()
    rank = dist_utils.rank()
    is_main = rank == 0
    out_dir = Path(out_dir)
    ckpt_dir, log_file = out_dir / "checkpoints", out_dir / "train_log.jsonl"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    config = recipe.model_config()
    state = _new_state(recipe, config, build, device)
    _resume_or_prepare(
        state, adapter, ckpt_dir, resume=resume, ema_decay=t.ema_decay, device=device
    )
    dist_utils.broadcast_parameters(state.model)
    total = t.steps if max_steps is None else min(t.steps, max_steps)
    if is_main:
        _trim_log(log_file, state.step)
        progress.start("steps", t.steps, f"train {recipe.task}")
        progress.update("steps", state.step)
    t0 = time.time()

    def wall_now() -> float:
        return state.wall_before + time.time() - t0

    last_val: dict[str, float] = {}
    stopped_early = False
    while state.step < total:
        if time_limit_s is not None and dist_utils.any_rank(time.time() - t0 > time_limit_s):
            stopped_early = True
            break
        loss, grad_norm, parts = _train_step(state, adapter, t, rank=rank, device=device)
        step = state.step
        record: dict[str, Any] = {}
        if step % t.log_every == 0 or step == total:
            record = _step_record(step, loss, grad_norm, parts, float(state.sched.get_last_lr()[0]))
        if step % t.val_every == 0 or step == total:
            last_val = (
                _validate_and_keep_best(state, adapter, ckpt_dir, t.val_batches) if is_main else {}
            )
            if last_val:
                val = {f"val_{k}": round(v, 6) for k, v in last_val.items()}
                record = {**(record or {"step": step}), **val}
        if is_main:
            if record:
                _emit(log_file, {**record, "wall": round(wall_now(), 1)}, on_log)
            progress.update("steps", step)
            if step % t.ckpt_every == 0:
                _save_checkpoint(state, ckpt_dir, wall_now())
    if is_main:
        _save_checkpoint(state, ckpt_dir, wall_now())
    wall = wall_now()
    dist_utils.barrier()
    if is_main:
        progress.end("steps")
    if state.step >= t.steps and is_main:
        last_val = _export_final(
            state, adapter, recipe, config, out_dir, wall, last_val, device, command
        )
    elif stopped_early:
        log.warning("stopped at step %d of %d (time limit); rerun to resume", state.step, t.steps)
    return TrainResult(out_dir, state.step, wall, last_val, state.best)


def _trim_log(path: Path, step: int) -> None:
    """Keep only the records up to ``step`` (0: start a new log)."""
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and step > 0 and json.loads(line).get("step", 0) <= step
    ]
    write_text_atomically(path, "".join(line + "\n" for line in keep))


def _validate(
    model: nn.Module, adapter: TaskAdapter, ema: EMA | None, max_batches: int
) -> dict[str, float]:
    model.eval()
    with torch.no_grad(), ema.swapped_in(model) if ema is not None else contextlib.nullcontext():
        metrics = adapter.validate(model, max_batches=max_batches)
    return metrics


def export(
    model: nn.Module,
    config: ModelConfig,
    recipe: Recipe,
    adapter: TaskAdapter,
    *,
    out_dir: Path,
    steps: int,
    wall: float,
    metrics: dict[str, float],
    device: torch.device,
    command: str | None,
) -> Path:
    """Write the zoo folder: config.json, model.safetensors, README.md card."""
    from audiotool.checkpoints import save_pretrained

    params = sum(p.numel() for p in model.state_dict().values())
    facts = adapter.card_facts()
    tag = {
        "upsample": "audio-to-audio",
        "separate": "audio-to-audio",
        "reconstruct": "audio-to-audio",
        "embed": "feature-extraction",
    }.get(recipe.task, "audio")
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else []
    cmd = command or " ".join(shlex.quote(a) for a in argv)
    lines = [
        "---",
        "library_name: audiotool",
        f"pipeline_tag: {tag}",
        f"tags: [audiotool, {recipe.task}, {config.family}]",
        "---",
        "",
        f"# {out_dir.name}",
        "",
        f"A `{config.family}` model (`{recipe.model.preset}` preset) for `audiotool "
        f"{recipe.task}`, trained with `audiotool train`.",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {params:,} ({params * 4 / 1e6:.1f} MB fp32) |",
        f"| sample rate | {config.sample_rate} Hz |",
        f"| steps | {steps} (batch {recipe.train.batch_size}) |",
        f"| hardware | {_hardware(device)} |",
        f"| wall time | {wall / 3600:.2f} h |",
        f"| data | {facts.get('data', '')} |",
        "",
        *(["## Design", "", recipe.notes, ""] if recipe.notes else []),
        "## Validation (during training)",
        "",
        *(f"- {k}: {v:.4f}" for k, v in metrics.items()),
        "",
        "## Training",
        "",
        f"Command: `{cmd}`",
        "",
        "```yaml",
        yaml.safe_dump(  # via JSON: tuples become lists, which safe_dump can write
            json.loads(json.dumps({k: v for k, v in recipe.to_dict().items() if k != "notes"})),
            sort_keys=False,
            default_flow_style=None,
        ).strip(),
        "```",
        "",
        "## Evaluation",
        "",
        EVAL_MARKER,
        "",
        "Not evaluated yet.",
        "",
    ]
    return save_pretrained(model, config, out_dir, card="\n".join(lines))


def update_card_eval(folder: Path, text: str) -> None:
    """Replace the card's Evaluation section (after the marker) with ``text`` (atomically)."""
    card = Path(folder) / "README.md"
    body = card.read_text(encoding="utf-8")
    if EVAL_MARKER not in body:
        raise UsageError(f"{card} has no evaluation marker")
    head = body.split(EVAL_MARKER)[0]
    write_text_atomically(card, head + EVAL_MARKER + "\n\n" + text.strip() + "\n")
