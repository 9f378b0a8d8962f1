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
from typing import Any, Protocol

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from audiotool.errors import UsageError
from audiotool.models._config import ModelConfig
from audiotool.paths import replace_atomically, write_text_atomically
from audiotool.progress import NullProgress, Progress
from audiotool.training import distributed as dist_utils
from audiotool.training.recipe import Recipe

log = logging.getLogger(__name__)

EVAL_MARKER = "<!-- evaluation -->"


class TaskAdapter(Protocol):
    """What the loop needs from a task (see :mod:`audiotool.training.adapters`)."""

    name: str
    higher_is_better: bool

    def train_batch(
        self, step: int, rank: int, batch_size: int, generator: torch.Generator
    ) -> Any: ...

    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]: ...

    def validate(self, model: nn.Module, *, max_batches: int) -> dict[str, float]: ...

    def card_facts(self) -> dict[str, Any]: ...

    def prepare(self, model: nn.Module) -> None:
        """Called once on a fresh (not resumed) model, e.g. to set normalisation stats."""


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
    ckpt_dir = out_dir / "checkpoints"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    config = recipe.model_config()
    torch.manual_seed(t.seed)
    model = build(config).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UsageError("the model has no trainable parameters")
    opt = torch.optim.AdamW(trainable, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
    if t.amp == "fp16" and device.type != "cuda":
        raise UsageError("amp fp16 needs a CUDA device", hint="use amp: bf16 or none on the CPU")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.amp]
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp == "fp16")
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    start, best, wall_before = 0, None, 0.0
    state_path = ckpt_dir / "train_state.pt"
    resuming = resume and state_path.is_file()
    if not resuming:
        adapter.prepare(model)
        if ema is not None:
            ema = EMA(model, t.ema_decay)
    if resuming:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(load_file(str(ckpt_dir / state["model_file"]), device=str(device)))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state["ema_file"]:
            ema.load_state_dict(
                load_file(str(ckpt_dir / state["ema_file"]), device=str(device)),
                int(state["ema_updates"]),
            )
        start, best, wall_before = int(state["step"]), state.get("best"), float(state["wall"])
        log.info("resumed at step %d", start)
    dist_utils.broadcast_parameters(model)
    if is_main:
        _trim_log(out_dir / "train_log.jsonl", start)
    total = t.steps if max_steps is None else min(t.steps, max_steps)
    log_file = out_dir / "train_log.jsonl"
    t0 = time.time()
    last_val: dict[str, float] = {}
    if is_main:
        progress.start("steps", t.steps, f"train {recipe.task}")
        progress.update("steps", start)

    def checkpoint(step: int) -> None:
        """Weights go to step-named files first; ``train_state.pt`` (written atomically, last)
        names them, so a run killed at any point resumes from a consistent set."""
        if not is_main:
            return
        model_file, ema_file = f"model-{step:08d}.safetensors", f"ema-{step:08d}.safetensors"
        _save_tensors(model.state_dict(), ckpt_dir / model_file)
        if ema is not None:
            _save_tensors(ema.state_dict(), ckpt_dir / ema_file)
        saved = {
            "step": step,
            "model_file": model_file,
            "ema_file": ema_file if ema is not None else "",
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "ema_updates": ema.updates if ema else 0,
            "best": best,
            "wall": wall_before + time.time() - t0,
        }
        replace_atomically(state_path, lambda tmp: torch.save(saved, tmp))
        keep = {model_file, ema_file}
        for old in [*ckpt_dir.glob("model-*.safetensors"), *ckpt_dir.glob("ema-*.safetensors")]:
            if old.name not in keep:
                old.unlink(missing_ok=True)

    step = start
    stopped_early = False
    while step < total:
        if time_limit_s is not None and dist_utils.any_rank(time.time() - t0 > time_limit_s):
            stopped_early = True
            break
        model.train()
        gen = _batch_generator(t.seed, step, rank)
        # the global RNGs (nn.Dropout, torch.rand without a generator) are step-indexed too,
        # so a resumed run repeats the uninterrupted run's random draws exactly
        torch.manual_seed(_step_seed(t.seed, step, rank) ^ 0x5EED)
        batch = adapter.train_batch(step, rank, t.batch_size, gen)
        ctx = (
            torch.autocast(device_type=device.type, dtype=amp_dtype)
            if amp_dtype
            else contextlib.nullcontext()
        )
        with ctx:
            loss, parts = adapter.loss(model, batch, gen)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        dist_utils.average_gradients(trainable)
        scaler.unscale_(opt)
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip if t.grad_clip > 0 else math.inf)
        )
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        if ema is not None and step > t.ema_start:
            ema.update(model)
        record: dict[str, Any] = {}
        if step % t.log_every == 0 or step == total:
            record = {
                "step": step,
                "loss": round(float(loss.detach()), 6),
                "lr": sched.get_last_lr()[0],
                "grad_norm": round(grad_norm, 4),
                **{k: round(v, 6) for k, v in parts.items()},
            }
        if step % t.val_every == 0 or step == total:
            last_val = _validate(model, adapter, ema, t.val_batches) if is_main else {}
            if last_val:
                head = next(iter(last_val.values()))
                better = best is None or (head > best if adapter.higher_is_better else head < best)
                if better:
                    best = head
                    if is_main:
                        weights = ema.state_dict() if ema else model.state_dict()
                        _save_tensors(weights, ckpt_dir / "best.safetensors")
                record = {
                    **(record or {"step": step}),
                    **{f"val_{k}": round(v, 6) for k, v in last_val.items()},
                }
        if record and is_main:
            record["wall"] = round(wall_before + time.time() - t0, 1)
            with open(log_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            log.info("%s", record)
            if on_log is not None:
                on_log(record)
        if is_main:
            progress.update("steps", step)
        if step % t.ckpt_every == 0:
            checkpoint(step)
    checkpoint(step)
    wall = wall_before + time.time() - t0
    dist_utils.barrier()
    if is_main:
        progress.end("steps")
    if step >= t.steps and is_main:
        with ema.swapped_in(model) if ema is not None else contextlib.nullcontext():
            final = last_val or _validate(model, adapter, None, t.val_batches)
            export(
                model,
                config,
                recipe,
                adapter,
                out_dir=out_dir,
                steps=step,
                wall=wall,
                metrics=final,
                device=device,
                command=command,
            )
        last_val = final
    elif stopped_early:
        log.warning("stopped at step %d of %d (time limit); rerun to resume", step, t.steps)
    return TrainResult(out_dir, step, wall, last_val, best)


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
    from audiotool.hub import save_pretrained

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
