"""Benchmark: time and peak memory of the `prepare` and `vocab` stages on generated corpora of 100 MB and 1 GB.

Generates a corpus of each size in a temporary folder (Zipfian words with punctuation, line breaks and
paragraphs, ASCII with some accented letters, dashes, quotes, CJK and an emoji), runs each stage script as
a subprocess exactly as `dvc repro` runs it (`corpus=file corpus.path=<file>`; `vocab=char`, then
`vocab=word`), and prints per size and stage its seconds, MB/s (of corpus) and peak RSS (the child's
`ru_maxrss`, through os.wait4). The generated files are deleted afterwards; a 1 GB run needs about 6 GB
of free disk in the temporary folder (the corpus, the prepared splits, the encoded char-level ids).

    python bench/prepare_vocab.py                        # 100 MB and 1 GB (issue 20: <= 4 GB peak at 1 GB)
    python bench/prepare_vocab.py --sizes 10,100 --tmp /scratch
    python bench/prepare_vocab.py --shakespeare --runs 5  # the embedded 5 MB corpus: median wall-clock of 5 runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rnnlab.config import write_params  # noqa: E402

MB = 10**6
DISK_PER_BYTE = 6  # corpus + prepared splits + char ids (2 bytes a character) + room


# --- a generated corpus ----------------------------------------------------------------------------------

LETTERS = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
LETTER_P = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9,
                     1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1])
PUNCTUATION = {1: ",", 2: ".", 15: "'s", 40: ";", 60: ":", 80: "(", 81: ")", 120: "—", 150: "“", 151: "”", 200: "?",
               250: "!", 300: "-", 500: "🙂"}  # Zipf rank -> token
ACCENTED = "éèàüöñçß"


def vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """`size` word types, frequent first: longer words at lower ranks (about 2 letters at the top, 9 at rank
    100,000), punctuation at fixed ranks, 3 % with an accented letter, 0.5 % CJK, 10 % capitalised."""
    ranks = np.arange(1, size + 1)
    lengths = np.clip(np.round(rng.normal(1.5 + 1.5 * np.log10(ranks), 1.2)), 1, 20).astype(int)
    letters = rng.choice(LETTERS, lengths.sum(), p=LETTER_P / LETTER_P.sum()).tolist()
    ends = np.cumsum(lengths).tolist()
    words, start = [], 0
    for end, u in zip(ends, rng.random(size).tolist()):
        word = letters[start:end]
        if u < 0.03:
            word[len(word) // 2] = ACCENTED[int(u * 1000) % len(ACCENTED)]
        elif u < 0.035:
            word = [chr(0x4E00 + int(u * 1e7) % 20000), chr(0x4E00 + int(u * 1e9) % 20000)]
        elif u > 0.9:
            word[0] = word[0].upper()
        words.append("".join(word))
        start = end
    for rank, token in PUNCTUATION.items():
        words[rank - 1] = token
    return words


def generate(path: Path, size: int, seed: int = 0) -> None:
    """A corpus of about `size` bytes (whole lines): Zipfian tokens (exponent 1.1 over 100,000 types), lines
    of 1-30 tokens, a blank line after one line in 20."""
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(rng, 100_000), dtype=object)
    cdf = np.cumsum(1 / np.arange(1, len(words) + 1) ** 1.1)
    cdf /= cdf[-1]
    written = 0
    with open(path, "wb") as fh:
        while written < size:
            tokens = words[np.searchsorted(cdf, rng.random(1_000_000))].tolist()
            ends = np.cumsum(rng.integers(1, 31, 70_000))
            ends = ends[ends < len(tokens)].tolist()
            gaps = (rng.random(len(ends)) < 0.05).tolist()
            lines = [" ".join(tokens[a:b]) + ("\n\n" if gap else "\n") for a, b, gap in zip([0, *ends], ends, gaps)]
            data = "".join(lines).encode()
            fh.write(data)
            written += len(data)


# --- running a stage -----------------------------------------------------------------------------------


def run_stage(stage: str, cwd: Path) -> tuple[float, int]:
    """Run pipeline/<stage>.py in `cwd` (its params.yaml): wall-clock seconds and peak RSS in bytes."""
    log = cwd / f"{stage}.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "pipeline" / f"{stage}.py")], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{stage} failed (exit {proc.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports kilobytes


def bench_size(size_mb: int, levels: list[str], tmp: Path) -> list[tuple]:
    """Rows (size, stage, level, seconds, MB/s, peak RSS) for a generated corpus of size_mb MB."""
    rows = []
    with tempfile.TemporaryDirectory(dir=tmp, prefix="rnnlab-bench-") as folder:
        cwd = Path(folder)
        corpus = cwd / "corpus.txt"
        generate(corpus, size_mb * MB)
        mb = corpus.stat().st_size / MB
        for i, level in enumerate(levels):
            overrides = ["corpus=file", f"corpus.path={corpus}", f"vocab={level}"]
            write_params(overrides, cwd / "params.yaml", REPO / "conf")
            for stage in ("prepare", "vocab") if i == 0 else ("vocab",):  # prepare does not depend on the vocab
                seconds, rss = run_stage(stage, cwd)
                rows.append((size_mb, stage, level if stage == "vocab" else "-", seconds, mb / seconds, rss))
                print_row(rows[-1])
    return rows


def print_row(row: tuple) -> None:
    size_mb, stage, level, seconds, rate, rss = row
    print(f"{size_mb:>7} MB  {stage:<8}{level:<6}{seconds:>9.1f}{rate:>9.1f}{rss / 2**30:>10.2f} GiB", flush=True)


def bench_sizes(sizes: list[int], levels: list[str], tmp: Path) -> None:
    need = DISK_PER_BYTE * max(sizes) * MB
    if shutil.disk_usage(tmp).free < need:
        sys.exit(f"{tmp} has {shutil.disk_usage(tmp).free / 1e9:.1f} GB free; the {max(sizes)} MB run needs about "
                 f"{need / 1e9:.0f} GB: choose another folder with --tmp")
    print(f"{'corpus':>10}  {'stage':<8}{'vocab':<6}{'seconds':>9}{'MB/s':>9}{'peak RSS':>14}")
    rows = [row for size in sizes for row in bench_size(size, levels, tmp)]
    worst = max(rows, key=lambda row: row[-1])
    print(f"largest peak RSS: {worst[-1] / 2**30:.2f} GiB ({worst[1]}, {worst[0]} MB, vocab {worst[2]})")


# --- the embedded Shakespeare corpus: wall-clock only -----------------------------------------------------


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def bench_shakespeare(runs: int) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="corpus sizes in MB, comma-separated (default 100,1000)")
    parser.add_argument("--levels", default="char,word", help="vocab options to run (default char,word)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where to generate the corpora")
    parser.add_argument("--shakespeare", action="store_true", help="time the embedded Shakespeare corpus instead")
    parser.add_argument("--runs", type=int, default=5, help="--shakespeare: runs per stage (the median is printed)")
    args = parser.parse_args()
    if args.shakespeare:
        bench_shakespeare(args.runs)
    else:
        bench_sizes([int(s) for s in args.sizes.split(",")], args.levels.split(","), args.tmp)


if __name__ == "__main__":
    main()
