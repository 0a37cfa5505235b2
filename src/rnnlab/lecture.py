"""The lecture's notebook (notebooks/lecture.ipynb), its reusable part: open the workspace `dvc repro` left,
sample step by step, and train the few small comparison runs the lecture needs.

The notebook keeps its cells short by calling these. Every run it trains is the pipeline's own stages
(`rnnlab.stages.*.run`) on a changed copy of the workspace's params, written under
`data/lecture/<name>/` and logged to MLflow under the experiment `lecture`; a run whose folder already
holds the same params is not trained again, so running the notebook twice costs its training once.

    lec = lecture.open_workspace()              # $RNNLAB_WORKSPACE, else the repository the notebook is in
    vocab, model, meta = lec.load()             # the pipeline's model, its vocabulary hash checked
    samples, trace = lecture.trace(model, vocab, lec.sample_spec(prime="ROMEO:"))

`RNNLAB_NOTEBOOK_QUICK=1` shrinks every run it trains to seconds (the notebook's test uses it).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rnnlab.errors import UserError
from rnnlab.params import Params, digest, load

QUICK_ENV, WORKSPACE_ENV = "RNNLAB_NOTEBOOK_QUICK", "RNNLAB_WORKSPACE"
EXPERIMENT = "lecture"
# The budget of each comparison run: steps, validations every `every` steps, streams per batch.
BUDGET = {"steps": 300, "every": 150, "batch": 32}
QUICK_BUDGET = {"steps": 20, "every": 10, "batch": 4}
# The agreement probe's runs: the vanishing-gradient preset (docs/gradients.md), shortened.
AGREEMENT = {"steps": 1500, "every": 500, "sentences": 20000}
QUICK_AGREEMENT = {"steps": 20, "every": 10, "sentences": 300}
QUICK_SIZES = ["model.embedding_size=8", "model.hidden_size=16", "data.batch_size=4", "data.bptt=8",
               "data.eval_batch_size=4", "evaluate.batch_size=2", "evaluate.bptt=8", "gradstats.gtt_length=8",
               "gradstats.gtt_batch=2", "gradstats.samples=2", "gradstats.sample_length=20", "sample.num_samples=3",
               "sample.max_length=40", "evaluate.agreement_per_distance=20", "trainer.accelerator=cpu"]


@dataclass
class Run:
    """A finished run of the lecture: its name, params, folder and the metrics of its stages."""
    name: str
    params: Params
    root: Path
    train: dict
    samples: list[str]
    evaluation: dict

    def grad_norm_rows(self) -> list[list[float]]:
        """grad_norm.csv: [step, pre_clip, post_clip, clip_fraction] every gradstats.every_n_steps steps."""
        return read_rows(self.root / self.params.paths.train / "grad_norm.csv")

    def loss_rows(self) -> list[list[float]]:
        """loss.csv: [step, training loss] every trainer.log_every_n_steps steps."""
        return read_rows(self.root / self.params.paths.train / "loss.csv")

    def gtt(self) -> tuple[list[int], list[float]]:
        """The last gradient-through-time curve: distances T - t and ‖∂L_T/∂x_t‖."""
        rows = read_rows(self.root / self.params.paths.train / "gtt.csv")
        return [int(r[0]) for r in rows], [r[1] for r in rows]

    def load(self):
        """(vocab, model, meta) of this run's model."""
        from rnnlab import trained_model

        paths = self.params.paths
        return trained_model.load_trained(self.root / paths.vocab, self.root / paths.train / "model")

    def agreement(self) -> list[dict]:
        """The agreement probe's accuracy per distance (evaluate stage, corpus=agreement)."""
        found = self.evaluation.get("agreement", {})
        return [{"distance": int(k[1:]), "accuracy": v} for k, v in sorted(found.items())]


@dataclass
class Lecture:
    """The workspace: its folder (the repository `dvc repro` ran in) and its params.yaml."""
    root: Path
    params: Params
    quick: bool

    def load(self):
        """(vocab, model, meta) of the pipeline's trained model; refuses a model of another vocabulary."""
        from rnnlab import trained_model

        with inside(self.root):
            return trained_model.load_trained(self.params.paths.vocab, f"{self.params.paths.train}/model")

    def sample_spec(self, **changes):
        """The sample stage's settings (params.yaml `sample`) with `changes`."""
        return replace(self.params.sample, **changes)

    def picture(self) -> Path:
        """The sample stage's step-by-step picture of its first sample."""
        return self.root / self.params.paths.samples / "sampling_steps.png"

    def figure(self, name: str) -> Path:
        """Where the notebook's own figures go: data/lecture/figures/<name>."""
        return self.root / "data" / "lecture" / "figures" / name

    def variant(self, name: str, **changes: dict) -> Run:
        """The workspace's params with `changes` (sections → values), trained with the lecture's budget."""
        budget = QUICK_BUDGET if self.quick else BUDGET
        params = self.params.replace(**changes)
        params = params.replace(trainer={"max_steps": budget["steps"], "val_check_interval": budget["every"]}
                                | changes.get("trainer", {}), data={"batch_size": budget["batch"]})
        return self.train(name, params)

    def agreement_run(self, cell: str) -> Run:
        """A word-level `cell` model of the agreement corpus (the `vanishing` preset, shortened)."""
        from rnnlab.config import compose

        budget = QUICK_AGREEMENT if self.quick else AGREEMENT
        overrides = ["+experiment=vanishing", f"model={cell}", f"trainer.max_steps={budget['steps']}",
                     f"trainer.val_check_interval={budget['every']}",
                     f"corpus.generator.n_sentences={budget['sentences']}", *(QUICK_SIZES if self.quick else [])]
        return self.train(f"agreement-{cell}", compose(overrides, self.conf_dir()))

    def conf_dir(self) -> Path:
        if not (self.root / "conf").is_dir():
            raise UserError(f"no conf/ in {self.root}; open the notebook in the rnnlab repository, or set "
                            f"{WORKSPACE_ENV} to it")
        return self.root / "conf"

    def train(self, name: str, params: Params) -> Run:
        """Run prepare, vocab, train, sample and evaluate for `params` in data/lecture/<name>/ (skipped when
        that folder already finished the same params)."""
        folder = Path("data") / "lecture" / name
        paths = {k: str(folder / k) for k in ("prepared", "vocab", "train", "samples", "eval", "state")}
        params = params.replace(paths=paths, tracking={"experiment": EXPERIMENT, "run_name": f"lecture-{name}",
                                                       "register_model": None})
        done = self.root / folder / "params.digest"
        with inside(self.root):
            if done.exists() and done.read_text() == digest(params.logged()):
                print(f"{name}: trained before, in {folder}")
            else:
                started = time.monotonic()
                with contextlib.redirect_stdout(io.StringIO()):  # the stages' reports: the summary below says it
                    run_stages(params)
                done.write_text(digest(params.logged()))
                print(f"{name}: trained {params.trainer.max_steps} steps of {params.data.batch_size} x "
                      f"{params.data.bptt} tokens in {time.monotonic() - started:.0f} s, in {folder}")
            return finished(name, params, self.root)


def open_workspace(root: str | Path | None = None, quick: bool | None = None) -> Lecture:
    """The workspace in `root`, else $RNNLAB_WORKSPACE, else the folder above notebooks/ (or this one)."""
    found = Path(root or os.environ.get(WORKSPACE_ENV) or default_root()).resolve()
    if not (found / "params.yaml").exists():
        raise UserError(f"no params.yaml in {found}; set {WORKSPACE_ENV} to the repository where `dvc repro` ran")
    quick = os.environ.get(QUICK_ENV, "") not in ("", "0") if quick is None else quick
    with inside(found):
        return Lecture(found, load("params.yaml"), quick)


def default_root() -> Path:
    here = Path.cwd()
    return here.parent if here.name == "notebooks" and (here.parent / "params.yaml").exists() else here


@contextlib.contextmanager
def inside(folder: Path):
    """Work in `folder`: the workspace's relative paths (data/..., mlflow.db) resolve as under `dvc repro`."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_stages(params: Params) -> None:
    from rnnlab.stages import evaluate, prepare, sample, train, vocab

    for stage in (prepare, vocab, train, sample, evaluate):
        stage.run(params)


def finished(name: str, params: Params, root: Path) -> Run:
    """A run's outputs, read back: training metrics, sample texts, evaluation."""
    def read(path: str) -> dict:
        return json.loads((root / path).read_text(encoding="utf-8"))

    samples = [s["text"] for s in read(f"{params.paths.samples}/samples.json")["samples"]]
    return Run(name, params, root, read(f"{params.paths.train}/metrics.json"), samples,
               read(f"{params.paths.eval}/metrics.json"))


def read_rows(path: Path) -> list[list[float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [[float(v) for v in row] for row in list(csv.reader(fh))[1:]]


# --- sampling, step by step ------------------------------------------------------------------------------


def trace(model, vocab, spec, steps: int = 24):
    """The samples and the recorded first steps of the first one, from the pipeline's own sampler."""
    from rnnlab import sampling

    recorder = sampling.Trace(max_steps=steps)
    return sampling.sample(model, vocab, spec, recorder), recorder


def trace_with_rejection(model, vocab, spec, tries: int = 50):
    """A first sample whose recorded steps include a rejected `<unk>` (seeds spec.seed, +1, ...; the last
    tried when none has one), to show the redraw."""
    for seed in range(spec.seed, spec.seed + tries):
        samples, recorder = trace(model, vocab, replace(spec, seed=seed, num_samples=1))
        if any(step.rejected for step in recorder.steps):
            break
    return samples, recorder


def draw_steps(trace_, vocab, path: Path, title: str) -> Path:
    """The step-by-step picture of a trace (the sample stage draws the same for its first sample)."""
    from rnnlab import plots

    plots.sampling_steps(trace_.to_json(vocab), path, title)
    return path


def rejection_rate(samples) -> float:
    """`<unk>` draws rejected per token drawn (the evaluate stage's samples/unk_rejection_rate)."""
    from rnnlab.sampling import sample_stats

    return sample_stats(samples, [False] * len(samples))["unk_rejection_rate"]
