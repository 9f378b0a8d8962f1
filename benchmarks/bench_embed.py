"""Embedding throughput: files per second, batched vs one by one (audio branch, light preset).

100 clips of 10 s at 16 kHz (seeded noise; random weights — speed does not depend on them), on
this machine's CPU (or --device). "one by one" runs each file through the full per-file path
(overlap-add + pooling, batch 1); "batched" stacks clips into mini-batches of --batch-size
(:func:`audiotool.tasks.embed.embed_batch`).

    python benchmarks/bench_embed.py [--device cpu] [--clips 100] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--preset", default="light")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 clips of 2 s, tiny preset")
    args = ap.parse_args()
    import torch

    from audiotool.models.audio_branch import PRESETS, build_model
    from audiotool.tasks.common import Runtime
    from audiotool.tasks.embed import embed_batch, embed_tensor

    if args.quick:
        args.clips, args.seconds, args.preset = 8, 2.0, "tiny"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = PRESETS[args.preset]()
    dev = torch.device(args.device)
    model = build_model(cfg).to(dev).eval()
    clips = 0.1 * torch.randn(
        args.clips, int(args.seconds * 16000), generator=torch.Generator().manual_seed(1)
    )
    one = Runtime(device=dev, dtype=None, batch_size=1, seed=0)
    batched = Runtime(device=dev, dtype=None, batch_size=args.batch_size, seed=0)
    embed_batch(model, cfg, clips[:2], 16000, runtime=batched)  # warm-up
    t0 = time.perf_counter()
    for c in clips:
        embed_tensor(model, cfg, c[None], 16000, runtime=one)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed_batch(model, cfg, clips, 16000, runtime=batched)
    t_batch = time.perf_counter() - t0
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.machine()
    print(
        f"audio branch '{args.preset}' ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} "
        f"M params), {args.clips} clips x {args.seconds:g} s, device {dev} ({name}), "
        f"{args.threads} threads"
    )
    print(f"{'path':<14}{'batch':>6}{'files/s':>10}{'x realtime':>12}")
    for label, b, t in (("one by one", 1, t_one), ("batched", args.batch_size, t_batch)):
        print(f"{label:<14}{b:>6}{args.clips / t:>10.2f}{args.clips * args.seconds / t:>12.1f}")
    print(f"ratio batched / one by one: {t_one / t_batch:.2f}")


if __name__ == "__main__":
    main()
