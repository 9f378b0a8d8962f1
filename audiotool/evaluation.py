"""Evaluation on real recordings, beside baselines (``audiotool eval``).

JSON schema (stable)::

    upsample:    {"task": "upsample", "input_rate": 16000, "eval_rate": 48000,
                  "degradation": str,
                  "rows": [{"system": "model" | "input" | "baseline",
                            "mean": {"lsd": f, "lsd_hf": f, "lsd_lf": f, "si_sdr": f,
                                     "hf_ratio_db": f, "limited": int | null},
                            "files": [{"file": str, "lsd": f, ..., "hf_ratio_db": f,
                                       "limited": bool | null}]}]}
                 hf_ratio_db: generated-to-true energy above the input's Nyquist (dB);
                 limited: whether the system had to turn its generated band down to stay
                 within full scale (null: the system does not say; mean: how many files)
    separate:    {"task": "separate", "rows": [{"system": ..., "mean": {"vocals": {"si_sdr": f,
                  "usdr": f[, "csdr": f]}, ..., "average": {...}}, "files": [{"file": str,
                  "vocals": {...}, ..., "average": {...}}]}]}
    reconstruct: {"task": "reconstruct", "rows": [{"system", "mean": {"si_sdr", "log_mel",
                  "mrstft"}, "files": [...]}]}
    embed:       {"task": "embed", "rows": [{"system", "mean": {"knn1", "knn5",
                  "linear_probe"}, "n_clips": int, "n_labels": int}]}

Non-finite numbers (the SI-SDR of a silent reference) are written as ``null``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from audiotool.audio import fit_length
from audiotool.errors import EngineError, InputError
from audiotool.paths import is_audio_path
from audiotool.progress import NullProgress, Progress

log = logging.getLogger(__name__)

DEGRADATION = (
    "reference resampled to 48 kHz, then to the input rate and back to 48 kHz with a "
    "Kaiser-windowed sinc (width 64, rolloff 0.9476, beta 14.77; stop band < -100 dB above "
    "the input Nyquist) — audiotool.dsp.degrade"
)
#: ``(audio, rate) -> audio`` or ``(audio, {"limited": bool})``
UpsampleSystem = Callable[[Tensor, int], Tensor | tuple[Tensor, Mapping[str, Any]]]
SeparateSystem = Callable[[Tensor, int], Mapping[str, Tensor]]


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _read(path: Path) -> tuple[Tensor, int]:
    from audiotool.audio import read_audio

    a = read_audio(path)
    return a.samples, a.sample_rate


def find_references(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_audio_path(p))
    if not files:
        raise InputError(f"{folder}: no audio files to evaluate on")
    return files


def find_songs(folder: Path, stems: Sequence[str]) -> list[Path]:
    """Song folders under ``folder``: ``mixture.wav`` plus one ``<stem>.wav`` per stem."""
    songs = sorted(p.parent for p in Path(folder).rglob("mixture.wav"))
    orphans = sorted({p.parent for s in stems for p in Path(folder).rglob(f"{s}.wav")} - set(songs))
    if orphans:
        raise InputError(f"{orphans[0]}: has stem files but no mixture.wav")
    if not songs:
        raise InputError(f"{folder}: no song folders (mixture.wav + one wav per stem)")
    for song in songs:
        missing = [s for s in stems if not (song / f"{s}.wav").is_file()]
        if missing:
            raise InputError(f"{song}: missing {', '.join(m + '.wav' for m in missing)}")
    return songs


# --------------------------------------------------------------------------- upsample


def evaluate_upsample(
    data_dir: Path,
    *,
    systems: Mapping[str, UpsampleSystem],
    input_rate: int,
    eval_rate: int = 48000,
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score upsampling systems on the references in ``data_dir`` (see the module schema).

    Rows: every given system (e.g. ``"model"``), ``"input"`` (the degraded input itself) and
    ``"baseline"`` (:func:`audiotool.baselines.spectral_band_replication`). A system may return
    ``(audio, info)`` where ``info["limited"]`` says whether its output needed limiting.
    ``limit``: score that many references spread evenly over the sorted list. ``progress``:
    ``"files"`` bar.
    """
    from audiotool.audio import resample
    from audiotool.baselines import spectral_band_replication
    from audiotool.dsp import degrade
    from audiotool.errors import UsageError
    from audiotool.metrics import high_band_energy_ratio, lsd, si_sdr

    if input_rate >= eval_rate:
        raise UsageError(f"input rate {input_rate} must be below the evaluation rate {eval_rate}")
    all_systems: dict[str, UpsampleSystem] = dict(systems)
    all_systems["input"] = lambda x, sr: resample(x, sr, eval_rate)
    all_systems["baseline"] = lambda x, sr: spectral_band_replication(
        resample(x, sr, eval_rate), eval_rate, 0.95 * sr / 2
    )
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in all_systems}
    refs = find_references(data_dir)
    if limit is not None and limit < len(refs):
        refs = [refs[i * len(refs) // limit] for i in range(limit)]
    progress = progress or NullProgress()
    progress.start("files", len(refs))
    for i_ref, path in enumerate(refs):
        progress.update("files", i_ref, len(refs))
        audio, rate = _read(path)
        if rate <= input_rate:
            log.warning("%s: recorded at %d Hz, not above the input rate; skipped", path, rate)
            continue
        ref = resample(audio, rate, eval_rate)
        low = resample(degrade(ref, eval_rate, input_rate), eval_rate, input_rate)
        for name, system in all_systems.items():
            out = system(low, input_rate)
            est, info = out if isinstance(out, tuple) else (out, {})
            n = ref.shape[-1]
            est = (
                est[..., :n]
                if est.shape[-1] >= n
                else torch.nn.functional.pad(est, (0, n - est.shape[-1]))
            )
            rows[name].append(
                {
                    "file": str(path),
                    "lsd": lsd(ref, est, sample_rate=eval_rate),
                    "lsd_hf": lsd(
                        ref, est, sample_rate=eval_rate, input_rate=input_rate, band="hf"
                    ),
                    "lsd_lf": lsd(
                        ref, est, sample_rate=eval_rate, input_rate=input_rate, band="lf"
                    ),
                    "si_sdr": _finite(si_sdr(ref, est)),
                    "hf_ratio_db": _finite(
                        high_band_energy_ratio(
                            ref, est, sample_rate=eval_rate, input_rate=input_rate
                        )
                    ),
                    "limited": None if "limited" not in info else bool(info["limited"]),
                }
            )
    progress.update("files", len(refs), len(refs))
    progress.end("files")
    keys = ("lsd", "lsd_hf", "lsd_lf", "si_sdr", "hf_ratio_db")
    return {
        "task": "upsample",
        "input_rate": input_rate,
        "eval_rate": eval_rate,
        "degradation": DEGRADATION,
        "rows": [
            {
                "system": name,
                "mean": {
                    **{k: _mean([f[k] for f in files]) for k in keys},
                    "limited": _count([f["limited"] for f in files]),
                },
                "files": files,
            }
            for name, files in rows.items()
        ],
    }


def _count(flags: Sequence[bool | None]) -> int | None:
    """How many are True (None when no file said)."""
    said = [f for f in flags if f is not None]
    return sum(said) if said else None


# --------------------------------------------------------------------------- separate


def evaluate_separation(
    data_dir: Path,
    *,
    systems: Mapping[str, SeparateSystem],
    stems: Sequence[str] = ("vocals", "drums", "bass", "other"),
    with_csdr: bool = False,
) -> dict[str, Any]:
    """Per stem SI-SDR and uSDR (+ museval cSDR); rows: systems, ``"mixture"``, ``"baseline"``."""
    from audiotool.baselines import hpss_separation
    from audiotool.metrics import csdr, si_sdr, usdr

    all_systems: dict[str, SeparateSystem] = dict(systems)
    all_systems["mixture"] = lambda x, sr: {s: x for s in stems}
    all_systems["baseline"] = lambda x, sr: hpss_separation(x, sr, tuple(stems))
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in all_systems}
    for song in find_songs(data_dir, stems):
        mix, rate = _read(song / "mixture.wav")
        refs = {}
        for s in stems:
            refs[s], stem_rate = _read(song / f"{s}.wav")
            if stem_rate != rate or refs[s].shape != mix.shape:
                raise InputError(
                    f"{song / (s + '.wav')}: {stem_rate} Hz, shape "
                    f"{tuple(refs[s].shape)} differs from mixture.wav ({rate} Hz, "
                    f"{tuple(mix.shape)})"
                )
        for name, system in all_systems.items():
            est = system(mix, rate)
            missing = [s for s in stems if s not in est]
            if missing:
                raise EngineError(f"system '{name}' produced no {', '.join(missing)}")
            est = {s: fit_length(est[s], mix.shape[-1]) for s in stems}
            entry: dict[str, Any] = {"file": str(song)}
            for s in stems:
                scores = {
                    "si_sdr": _finite(si_sdr(refs[s], est[s])),
                    "usdr": _finite(usdr(refs[s], est[s])),
                }
                if with_csdr:
                    scores["csdr"] = _finite(csdr(refs[s], est[s], rate))
                entry[s] = scores
            entry["average"] = {k: _mean([entry[s][k] for s in stems]) for k in entry[stems[0]]}
            rows[name].append(entry)

    def summary(files: list[dict[str, Any]]) -> dict[str, Any]:
        metric_keys = list(files[0][stems[0]]) if files else ["si_sdr", "usdr"]
        mean = {s: {k: _mean([f[s][k] for f in files]) for k in metric_keys} for s in stems}
        mean["average"] = {k: _mean([mean[s][k] for s in stems]) for k in metric_keys}
        return mean

    families = song_families(data_dir)
    out_rows = []
    for name, files in rows.items():
        row: dict[str, Any] = {"system": name, "mean": summary(files), "files": files}
        if families:
            for f in files:
                f["family"] = families.get(Path(f["file"]).resolve())
            names = sorted({f["family"] for f in files if f["family"]})
            row["families"] = {
                fam: summary([f for f in files if f["family"] == fam]) for fam in names
            }
        out_rows.append(row)
    return {"task": "separate", "stems": list(stems), "rows": out_rows}


def song_families(data_dir: Path) -> dict[Path, str]:
    """Song folder -> source family, from the ``manifest.json`` of ``audiotool data build``
    (in ``data_dir`` or its parent) when its entries carry a ``family``; else empty."""
    for root in (Path(data_dir), Path(data_dir).parent):
        manifest = root / "manifest.json"
        if manifest.is_file():
            info = json.loads(manifest.read_text())
            return {
                (root / entry["file"]).parent.resolve(): str(entry["family"])
                for entry in info.get("files", [])
                if entry.get("family")
            }
    return {}


# --------------------------------------------------------------------------- reconstruct


def evaluate_reconstruct(
    data_dir: Path, *, systems: Mapping[str, Callable[[Tensor, int], Tensor]], rate: int = 16000
) -> dict[str, Any]:
    """Round-trip metrics at ``rate`` for each system ``(audio, rate) -> audio``."""
    from audiotool.audio import resample
    from audiotool.metrics import log_mel_distance, multi_resolution_stft_distance, si_sdr

    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    for path in find_references(data_dir):
        audio, sr = _read(path)
        ref = resample(audio.mean(0, keepdim=True), sr, rate)
        for name, system in systems.items():
            est = fit_length(system(ref, rate), ref.shape[-1])
            rows[name].append(
                {
                    "file": str(path),
                    "si_sdr": _finite(si_sdr(ref, est)),
                    "log_mel": log_mel_distance(ref, est, sample_rate=rate),
                    "mrstft": multi_resolution_stft_distance(ref, est),
                }
            )
    keys = ("si_sdr", "log_mel", "mrstft")
    return {
        "task": "reconstruct",
        "rows": [
            {"system": n, "mean": {k: _mean([f[k] for f in fs]) for k in keys}, "files": fs}
            for n, fs in rows.items()
        ],
    }


# --------------------------------------------------------------------------- embed


def knn_accuracy(vectors: np.ndarray, labels: Sequence[str], *, k: int = 1) -> float:
    """Leave-one-out k-NN accuracy with cosine similarity (majority vote, ties -> nearest)."""
    k = min(k, len(vectors) - 1)  # leave-one-out: a point never votes for itself
    v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    labels_arr = np.asarray(labels)
    correct = 0
    for i in range(len(v)):
        nn_idx = np.argsort(-sim[i])[:k]
        votes: dict[str, float] = {}
        for rank, j in enumerate(nn_idx):
            votes[labels_arr[j]] = votes.get(labels_arr[j], 0) + 1 + 1e-3 / (rank + 1)
        correct += max(votes, key=lambda lab: votes[lab]) == labels_arr[i]
    return correct / len(v)


def linear_probe_accuracy(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
    epochs: int = 300,
    weight_decay: float = 1e-3,
) -> float:
    """Stratified k-fold accuracy of a multinomial logistic regression (full-batch Adam on
    standardised features)."""
    labels_arr = np.asarray(labels)
    classes = sorted(set(labels))
    y_all = np.array([classes.index(lab) for lab in labels_arr])
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(y_all), dtype=int)
    for c in range(len(classes)):
        idx = rng.permutation(np.nonzero(y_all == c)[0])
        fold_of[idx] = np.arange(len(idx)) % folds
    correct = 0
    for f in range(folds):
        tr, te = fold_of != f, fold_of == f
        if not te.any() or not tr.any():
            continue
        mu, sd = vectors[tr].mean(0), vectors[tr].std(0) + 1e-6
        xtr = torch.tensor((vectors[tr] - mu) / sd, dtype=torch.float32)
        xte = torch.tensor((vectors[te] - mu) / sd, dtype=torch.float32)
        ytr = torch.tensor(y_all[tr])
        torch.manual_seed(seed)
        lin = torch.nn.Linear(xtr.shape[1], len(classes))
        opt = torch.optim.Adam(lin.parameters(), lr=0.05, weight_decay=weight_decay)
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
            opt.step()
        with torch.no_grad():
            correct += int((lin(xte).argmax(1).numpy() == y_all[te]).sum())
    return correct / len(y_all)


def evaluate_embeddings(
    data_dir: Path, *, systems: Mapping[str, Callable[[list[Path]], np.ndarray]]
) -> dict[str, Any]:
    """k-NN (k = 1, 5) and linear-probe accuracy on ``data_dir/<label>/*``."""
    files = find_references(data_dir)
    root = Path(data_dir)
    top = [p for p in files if p.parent == root]
    if top:
        raise InputError(f"{top[0]}: clips must sit in sub-folders named by their label")
    labels = [p.relative_to(root).parts[0] for p in files]
    if len(set(labels)) < 2:
        raise InputError(f"{data_dir}: needs sub-folders named by label (at least two)")
    rows = []
    for name, embed_fn in systems.items():
        vecs = np.asarray(embed_fn(files), dtype=np.float64)
        if vecs.ndim != 2 or vecs.shape[0] != len(files):
            raise EngineError(
                f"system '{name}' gave embeddings of shape {vecs.shape} for {len(files)} files"
            )
        rows.append(
            {
                "system": name,
                "n_clips": len(files),
                "n_labels": len(set(labels)),
                "mean": {
                    "knn1": knn_accuracy(vecs, labels, k=1),
                    "knn5": knn_accuracy(vecs, labels, k=5),
                    "linear_probe": linear_probe_accuracy(vecs, labels),
                },
            }
        )
    return {"task": "embed", "rows": rows}


# --------------------------------------------------------------------------- tables


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def format_rows(
    result: Mapping[str, Any], *, per_file: bool = True
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (per file, then the mean) of an evaluation result, as strings."""
    task = result["task"]
    rows: list[list[str]] = []
    if task == "separate":
        stems = [*result["stems"], "average"]
        header = ["system", "file"] + [f"{s} {m}" for s in stems for m in ("SI-SDR", "uSDR")]
        for row in result["rows"]:
            items = (row["files"] if per_file else []) + [
                {"file": f"mean {fam}", **m} for fam, m in row.get("families", {}).items()
            ]
            items.append({"file": "mean", **row["mean"]})
            for f in items:
                rows.append(
                    [
                        row["system"],
                        f["file"] if f["file"].startswith("mean") else Path(f["file"]).name,
                    ]
                    + [_fmt(f[s][m]) for s in stems for m in ("si_sdr", "usdr")]
                )
        return header, rows
    if task == "embed":
        header = ["system", "clips", "labels", "1-NN", "5-NN", "linear probe"]
        for row in result["rows"]:
            m = row["mean"]
            rows.append(
                [
                    row["system"],
                    str(row["n_clips"]),
                    str(row["n_labels"]),
                    _fmt(m["knn1"]),
                    _fmt(m["knn5"]),
                    _fmt(m["linear_probe"]),
                ]
            )
        return header, rows
    keys = (
        ["lsd", "lsd_hf", "lsd_lf", "si_sdr", "hf_ratio_db"]
        if task == "upsample"
        else ["si_sdr", "log_mel", "mrstft"]
    )
    header = ["system", "file", *keys] + (["limited"] if task == "upsample" else [])
    for row in result["rows"]:
        items = (row["files"] if per_file else []) + [{"file": "mean", **row["mean"]}]
        for f in items:
            cells = [row["system"], Path(f["file"]).name if f["file"] != "mean" else "mean"]
            cells += [_fmt(f.get(k)) for k in keys]
            if task == "upsample":
                cells.append(_fmt_limited(f.get("limited"), len(row["files"])))
            rows.append(cells)
    return header, rows


def _fmt_limited(v: bool | int | None, n_files: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v}/{n_files}"
