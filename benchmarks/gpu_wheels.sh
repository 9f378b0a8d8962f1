#!/usr/bin/env bash
# Download (here, with PyPI) the wheels benchmarks/gpu_check.sh needs on the GPU machine, whose
# image has torch, torchaudio, typer, rich, pyyaml, huggingface_hub, safetensors, numba, scipy,
# scikit-learn and pytest but not soundfile, librosa or demucs. They go to .whl/ (git-ignored;
# carried to the device with `carry: [".whl"]`, under 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" -d .whl \
  soundfile cffi pycparser librosa audioread soxr pooch decorator platformdirs \
  standard-aifc standard-sunau audioop-lts demucs==4.1.0 julius lameenc sphn
du -sh .whl
