"""Benchmark: the pipeline's fixed costs — `dvc repro` with nothing to do, and each stage's start-up
(Python plus the imports that stage performs before any work).

    python bench/pipeline_overhead.py [--runs 5]

Run it after `dvc repro` (the no-op timing needs an up-to-date pipeline). Prepare and vocab
throughput on the embedded corpus: bench/prepare_vocab.py.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What each stage imports on a real run (its script's imports plus the lazy ones inside run()).
STAGE_IMPORTS = {
    "params": "import rnnlab.stages.params, omegaconf",
    "prepare": "import rnnlab.stages.prepare, omegaconf",
    "vocab": "import rnnlab.stages.vocab, omegaconf",
    "train": "import rnnlab.stages.train, rnnlab.training, omegaconf",
    "sample": "import rnnlab.stages.sample, rnnlab.trained_model, rnnlab.sampling, rnnlab.tracking",
    "evaluate": "import rnnlab.stages.evaluate, rnnlab.trained_model, rnnlab.scoring, rnnlab.tracking",
}


def seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def row(name: str, times: list[float]) -> str:
    return f"{name:<28}{statistics.median(times):>9.2f}{min(times):>8.2f}{max(times):>8.2f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    runs = p.parse_args().runs
    print(f"{'what':<28}{'median s':>9}{'min':>8}{'max':>8}   (runs: {runs})")
    print(row("python -c pass", [seconds([sys.executable, "-c", "pass"]) for _ in range(runs)]))
    for stage, imports in STAGE_IMPORTS.items():
        print(row(f"start-up: {stage}", [seconds([sys.executable, "-c", imports]) for _ in range(runs)]))
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent))
    status = subprocess.run([dvc, "status"], cwd=REPO, capture_output=True, text=True).stdout
    if "up to date" not in status:
        print("dvc repro (nothing to do): skipped, the pipeline is not up to date; run `dvc repro` first")
        return
    print(row("dvc repro (nothing to do)", [seconds([dvc, "repro"]) for _ in range(runs)]))


if __name__ == "__main__":
    main()
