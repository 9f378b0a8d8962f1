#!/usr/bin/env bash
# One device check, run in one call where a GPU is lent (see benchmarks/RESULTS.md for where
# the figures go). Under 8 minutes on an H200; every step has its own time limit, and a failed
# step does not stop the others. Everything is logged to $OUT/gpu_check.log (or ./gpu_check.log).
#
# Prepare here (with PyPI):   bash benchmarks/gpu_wheels.sh
# Run on the device:          bash benchmarks/gpu_check.sh       (with .whl carried)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
log="$out/gpu_check.log"
: > "$log"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
step() {  # step SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  echo "== $name" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$log"
}
audiotool() { python3 -m audiotool "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tee -a "$log"

step 120 "gpu tests" python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
step 120 "engine (overlap-add) on cuda" python3 benchmarks/bench_engine.py --device cuda --quick
step 120 "separate: HDemucs engine vs demucs-style loop" \
  python3 benchmarks/bench_separate.py --device cuda --quick
step 150 "separate: htdemucs vs demucs apply_model" \
  python3 benchmarks/bench_separate.py --family htdemucs --device cuda --quick
step 120 "upsample: full AudioSR preset, 50 steps" \
  python3 benchmarks/bench_upsample.py --device cuda --full-steps 50 --seconds 30
step 150 "upsample: eager vs CUDA graphs (5.12 s, 30 s)" \
  python3 benchmarks/bench_upsample.py --device cuda --graphs-only
step 60 "embed" python3 benchmarks/bench_embed.py --device cuda --quick
step 150 "many short files: file by file vs read-ahead + packing" \
  python3 benchmarks/bench_many.py --device cuda --clips 200 --batch-sizes 4,16 \
  --tasks embed,separate,reconstruct --threads 16

mkdir -p /tmp/gc
step 60 "CLI upsample" audiotool upsample examples/speech_16k.flac -o /tmp/gc/up.wav \
  --device cuda --json --overwrite
step 60 "CLI separate" audiotool separate examples/music_44k.flac -o /tmp/gc/sep \
  --device cuda --json --overwrite
step 60 "CLI reconstruct" audiotool reconstruct examples/speech_16k.flac -o /tmp/gc/rt.wav \
  --device cuda --json --overwrite
step 60 "CLI embed" audiotool embed examples/ -o /tmp/gc/emb.npz --device cuda --json --overwrite
python3 -c "import numpy as np, soundfile as sf; x, r = sf.read('examples/music_44k.flac', \
always_2d=True); n = 300 * r; sf.write('/tmp/gc/song5.wav', np.tile(x, (n // len(x) + 1, 1))[:n], r)"
step 90 "separate a 5-minute song: whole process, where the time goes" bash -c \
  "python3 -m cProfile -s cumtime -m audiotool separate /tmp/gc/song5.wav -o /tmp/gc/sep5 \
  --device cuda --overwrite --quiet | head -45"
grep "^== .*: rc" "$log"
