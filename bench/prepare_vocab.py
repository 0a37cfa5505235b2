"""Benchmark: wall-clock of the `prepare` and `vocab` stages on the embedded 5 MB Shakespeare corpus.

Runs each stage script as a subprocess (imports included, as `dvc repro` runs them) in a scratch folder,
for char and word vocabularies, and prints the median of N runs.

    python bench/prepare_vocab.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rnnlab.config import write_params  # noqa: E402


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    print(f"{'stage':<10}{'vocab':<8}{'median s':>10}{'min s':>8}{'max s':>8}   (runs: {runs})")
    for level in ("char", "word"):
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp)
            write_params([f"vocab={level}"], cwd / "params.yaml", REPO / "conf")
            times: dict[str, list[float]] = {"prepare": [], "vocab": []}
            for _ in range(runs):
                for stage in times:
                    times[stage].append(timed([sys.executable, str(REPO / "pipeline" / f"{stage}.py")], cwd))
            for stage, ts in times.items():
                print(f"{stage:<10}{level:<8}{statistics.median(ts):>10.2f}{min(ts):>8.2f}{max(ts):>8.2f}")


if __name__ == "__main__":
    main()
