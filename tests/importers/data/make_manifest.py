"""Regenerate audiosr_manifest.json.gz from the reference dump.

The reference (``shared/reference/audiosr_state_dict.json``, one JSON object per tensor of the
AudioSR LatentDiffusion built from its own code) is outside the repository; this keeps the
names and shapes the compatibility test needs (everything but ``clap.*``, ``model_ema.*`` and
``logvar``) so the test runs on a clean checkout.

    python tests/importers/data/make_manifest.py ../shared/reference/audiosr_state_dict.json
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def main(src: str) -> None:
    rows = [json.loads(line) for line in Path(src).read_text().splitlines() if line.strip()]
    keep = {
        r["name"]: r["shape"]
        for r in rows
        if not r["name"].startswith(("clap.", "model_ema.")) and r["name"] != "logvar"
    }
    out = Path(__file__).with_name("audiosr_manifest.json.gz")
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        json.dump(keep, fh, sort_keys=True)
    print(f"{len(keep)} tensors -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
