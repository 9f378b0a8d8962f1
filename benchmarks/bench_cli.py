"""Whole-process timings of CLI commands: start-up, imports, model load, work, write, exit.

Each command runs ``--repeats`` times after ``--warmup`` untimed runs (page cache, pyc files),
as a child process; per run the wall clock, the child's CPU time (user + sys) and its peak RSS
come from ``os.wait4``. The table gives medians with (min-max).

    python benchmarks/bench_cli.py                       # the README's first command
    python benchmarks/bench_cli.py --repeats 9 --threads 1
    python benchmarks/bench_cli.py --command "audiotool upsample IN.wav -o {out}/x.wav" \\
        --command "audiotool separate IN.wav -o {out}/sep"

``{out}`` in a command is replaced by a fresh temporary folder per run (so nothing is skipped as
already done); every command must exit 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_COMMAND = f"audiotool upsample {ROOT / 'examples' / 'speech_16k.flac'} -o {{out}}/x.wav -q"


@dataclass
class Run:
    wall: float
    cpu: float
    peak_mib: float


def run_once(command: str, env: dict[str, str]) -> Run:
    """Run ``command`` once (``{out}`` -> a new temporary folder) and measure it."""
    with tempfile.TemporaryDirectory() as out:
        argv = shlex.split(command.replace("{out}", out))
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        if proc.returncode != 0:
            raise SystemExit(f"{command!r} exited {proc.returncode}:\n{err}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def _fmt(values: list[float], digits: int) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", action="append", help="command line ({out}: temp folder)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child")
    args = parser.parse_args()
    commands = args.command or [README_COMMAND]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start",
        file=sys.stderr,
    )
    print("| command | runs | wall s | CPU s | peak MiB |")
    print("|---|---:|---:|---:|---:|")
    for command in commands:
        for _ in range(args.warmup):
            run_once(command, env)
        runs = [run_once(command, env) for _ in range(args.repeats)]
        shown = command.replace(str(ROOT) + "/", "")
        print(
            f"| `{shown}` | {len(runs)} | {_fmt([r.wall for r in runs], 2)} | "
            f"{_fmt([r.cpu for r in runs], 2)} | {_fmt([r.peak_mib for r in runs], 0)} |",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end", file=sys.stderr)


if __name__ == "__main__":
    main()
