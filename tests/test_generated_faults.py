"""Generated fault tests (issue 19): Hypothesis draws the faults, every stage must survive them.

    test_generated_config_values    a key of the composed config (every section and leaf) set, in params.yaml,
                                    to a value of the wrong type, NaN, ±inf, negative, zero, huge, empty or
                                    nested; then a stage that reads the key runs
    test_generated_damaged_files    a file a stage reads (params.yaml, the corpus, prepared splits, the
                                    vocabulary, the model, checkpoints, samples, the MLflow store) deleted,
                                    emptied, truncated, overwritten with random bytes or text, replaced by a
                                    file of another shape or by a folder; then a stage that reads it runs
    test_generated_signals          `python pipeline/train.py` gets SIGTERM or SIGINT after a drawn delay, from
                                    launch (during start-up) or from the moment its MLflow run is open

The rule for every run: exit 0, or exit 2 and exactly one `error:` line (a signal: exit 128 + signal and
one line); never a traceback, never a hang (each run has a time limit), never an MLflow run left RUNNING.

Cost: stages run in this process through their scripts' entry point (`rnnlab.stages.main`, as
`python pipeline/<stage>.py` does), in a copy of a tiny project built once (tests/faultgen.py), so an
example costs milliseconds, or about a second where it trains. A subprocess only where the signal is the
subject, and for the trainer keys that make Lightning start or wait for processes (faultgen.SUBPROCESS_KEYS).
A fixed seed (RNNLAB_FAULT_SEED, default 19) and a small example budget (RNNLAB_FAULT_EXAMPLES scales it)
keep the whole file to a few minutes on 2 cores; no shrinking (a failing example is printed as drawn).
Each test prints its seed and how many examples it ran (`pytest -s`). To look at one class of fault, narrow
the draw: RNNLAB_FAULT_KEYS=optim,model.dropout (key prefixes), RNNLAB_FAULT_VALUES=nan,inf,-inf (reprs of
faultgen.BAD_VALUES), RNNLAB_FAULT_FILES=data/train/model/meta.json (faultgen.READ_BY). To list every
failing example of the budget instead of stopping at the first: RNNLAB_FAULT_SURVEY=1 (the test then fails
at its end, with the list).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import faultgen as fg
from conftest import BIN, REPO

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("RNNLAB_FAULT_SEED", "19"))
SCALE = float(os.environ.get("RNNLAB_FAULT_EXAMPLES", "1"))
SURVEY = os.environ.get("RNNLAB_FAULT_SURVEY") == "1"


def chosen(env: str, items: list, name=str) -> list:
    """`items` narrowed by the environment variable `env` (comma-separated; a key matches its prefixes)."""
    wanted = [w for w in os.environ.get(env, "").split(",") if w]
    return [i for i in items if not wanted or any(name(i) == w or name(i).startswith(w + ".") for w in wanted)]


def budget(examples: int) -> settings:
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, database=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck),
                    print_blob=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The tiny project with every stage's outputs (built once per module, copied per example)."""
    return fg.build_project(tmp_path_factory.mktemp("faults") / "base")


class Tally:
    """Examples run and their outcomes, printed when the test ends (passed or not); in a survey, the
    failing examples too."""

    def __init__(self, name: str) -> None:
        self.name, self.count, self.outcomes, self.start = name, 0, Counter(), time.monotonic()
        self.failures: list[str] = []
        print(flush=True)  # off the line of pytest's progress characters

    def add(self, line: str, outcome: str) -> None:
        self.count += 1
        self.outcomes[outcome] += 1
        self.line = f"[{self.name} #{self.count}] {line} -> {outcome}"
        print(f"  {self.line}", flush=True)

    @contextlib.contextmanager
    def judged(self):
        """The checks of one example: a failure ends the test, or in a survey is listed at its end."""
        try:
            yield
        except AssertionError as err:
            if not SURVEY:
                raise
            self.failures.append(f"{self.line}\n    {str(err)[-1200:]}")

    def report(self) -> None:
        seconds = time.monotonic() - self.start
        print(f"{self.name}: seed {SEED}, {self.count} examples in {seconds:.0f} s; outcomes {dict(self.outcomes)}"
              + (f"; {len(self.failures)} failing" if SURVEY else ""), flush=True)

    def run(self, examples) -> None:
        """Run the @given function `examples`, then report (also when it failed)."""
        try:
            examples()
        finally:
            self.report()
        assert not self.failures, f"{len(self.failures)} failing examples:\n" + "\n".join(self.failures)


def example_dir(base: Path, tally: Tally) -> Path:
    work = base.parent / f"{tally.name}-{tally.count + 1}"
    shutil.rmtree(work, ignore_errors=True)
    return fg.copy_project(base, work)


def first_line(outcome: fg.Outcome) -> str:
    lines = outcome.error_lines or (outcome.tb or outcome.err).strip().splitlines()[-1:]
    return lines[0][:160] if lines else ""


# --- bad values for every key --------------------------------------------------------------------------


def test_generated_config_values(base):
    drawable = {key: chosen("RNNLAB_FAULT_VALUES", fg.allowed_values(key), repr)
                for key in chosen("RNNLAB_FAULT_KEYS", fg.leaf_keys(fg.load_params(base)))}
    keys = [key for key in drawable if drawable[key]]
    tally = Tally("config")

    @st.composite
    def bad_setting(draw):
        key = draw(st.sampled_from(keys))
        value = draw(st.sampled_from(drawable[key]))
        return key, value, draw(st.sampled_from(fg.readers(key)))

    @seed(SEED)
    @budget(64)
    @given(bad_setting())
    def one(setting):
        key, value, stage = setting
        work = example_dir(base, tally)
        values = fg.load_params(work)
        fg.set_key(values, key, value)
        fg.save_params(work, values)  # a hand-edited params.yaml
        run = fg.run_stage_subprocess if key in fg.SUBPROCESS_KEYS else fg.run_stage
        outcome = run(stage, work)
        tally.add(f"{key}={value!r} | {stage}: {first_line(outcome)}", f"{stage} exit {outcome.code}")
        with tally.judged():
            fg.check_outcome(outcome)
            fg.check_no_running_run(work)
        shutil.rmtree(work)

    tally.run(one)


# --- damaged files ----------------------------------------------------------------------------------------


@st.composite
def damaged_file(draw):
    rel = draw(st.sampled_from(chosen("RNNLAB_FAULT_FILES", sorted(fg.READ_BY))))
    stage = draw(st.sampled_from(fg.READ_BY[rel]))
    kind = draw(st.sampled_from(fg.KINDS))
    pick = st.integers(0, 63)  # the other shape, the key (small, so that every one is drawn alike)
    text = st.one_of(st.sampled_from(["hello\n", "not a checkpoint\n", "{}", "[1, 2]"]), st.text(max_size=80))
    detail = {"truncated": st.floats(0, 1, exclude_max=True, allow_subnormal=False),  # the fraction kept
              "random bytes": st.binary(min_size=1, max_size=512), "text": text,
              "a value changed": st.tuples(pick, st.integers(0, len(fg.BAD_VALUES) - 1))}.get(kind, pick)
    return rel, stage, kind, draw(detail)


def test_generated_damaged_files(base):
    tally = Tally("files")

    @seed(SEED)
    @budget(48)
    @given(damaged_file())
    def one(case):
        rel, stage, kind, detail = case
        work = example_dir(base, tally)
        if stage == "train":
            fg.interrupted(work)  # so that the training reads its checkpoints and run.json to resume
        done = fg.damage(work / rel, kind, detail)
        outcome = fg.run_stage(stage, work)
        tally.add(f"{rel} {done} | {stage}: {first_line(outcome)}", f"{stage} exit {outcome.code}")
        with tally.judged():
            fg.check_outcome(outcome)
            fg.check_no_running_run(work)
        shutil.rmtree(work)

    tally.run(one)


# --- signals ---------------------------------------------------------------------------------------------

SIGNAL_TIMEOUT_S = 120  # a stopped training ends in seconds; this long is a hang
# The interpreter's first moments (before any rnnlab code can install a handler, the signal's default action
# applies) are not drawn: "launch" delays start at this many seconds, inside the imports before training.
STARTUP_S = 1.0


@st.composite
def signal_case(draw):
    sig = draw(st.sampled_from([signal.SIGTERM, signal.SIGINT]))
    anchor = draw(st.sampled_from(["launch", "run open"]))
    low, high = (STARTUP_S, 8.0) if anchor == "launch" else (0.0, 3.0)
    return sig, anchor, draw(st.floats(low, high, allow_subnormal=False))


def test_generated_signals(base):
    tally = Tally("signals")

    @seed(SEED)
    @budget(3)
    @given(signal_case())
    def one(case):
        sig, anchor, delay = case
        work = example_dir(base, tally)
        values = fg.load_params(work)
        values["trainer"] |= {"max_steps": 5000, "val_check_interval": 50}  # minutes: the signal comes first
        fg.save_params(work, values)
        shutil.rmtree(work / "data" / "train" / "checkpoints")  # its run.json appears again when the run is open
        (work / "data" / "train" / "metrics.json").unlink()  # written again only by a finished training
        before = fg.run_ids(work)
        code, sent_at, stderr = signalled_training(work, sig, anchor, delay)
        new = fg.run_statuses(work, exclude=before)
        last = ([line for line in stderr.splitlines() if line.startswith("error:")] or stderr.strip().splitlines()
                or [""])[-1]
        tally.add(f"{sig.name} {delay:.2f}s after {anchor} (sent at {sent_at:.2f}s): runs {new}, {last[:120]}",
                  f"exit {code}")
        with tally.judged():
            check_stopped(work, sig, code, stderr, new)
        shutil.rmtree(work)

    tally.run(one)


def signalled_training(work: Path, sig: signal.Signals, anchor: str, delay: float) -> tuple[int | str, float, str]:
    """Start `python pipeline/train.py` in `work`, send `sig` `delay` seconds after `anchor` (launch, or the
    moment the run is open: checkpoints/run.json written); returns the exit status ("hang" after
    SIGNAL_TIMEOUT_S), when the signal went (seconds after launch) and stderr."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    run_json = work / "data" / "train" / "checkpoints" / "run.json"
    log = work.parent / f"{work.name}.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, str(REPO / "pipeline" / "train.py")], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        launched = time.monotonic()
        try:
            while anchor == "run open" and not run_json.exists() and proc.poll() is None \
                    and time.monotonic() < launched + SIGNAL_TIMEOUT_S:
                time.sleep(0.01)
            time.sleep(delay)
            sent_at = time.monotonic() - launched
            proc.send_signal(sig)
            code = proc.wait(timeout=SIGNAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = "hang"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, sent_at, log.read_text()


def check_stopped(work: Path, sig: signal.Signals, code: int | str, stderr: str, new: list[str]) -> None:
    """Exit 128 + signal with one line and the run KILLED; or exit 0 after a finished training; or exit 2
    with one line. Never a traceback, a hang or a run left RUNNING."""
    tail = f"exit {code}; stderr:\n{stderr[-3000:]}"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code != "hang", f"no exit {SIGNAL_TIMEOUT_S} s after {sig.name}: {tail}"
    assert "RUNNING" not in new, f"an MLflow run left RUNNING ({new}): {tail}"
    if code == 0:  # finished before the signal: a finished training
        assert (work / "data" / "train" / "metrics.json").exists(), f"exit 0 without a finished training: {tail}"
        assert new == ["FINISHED"] and not errors, tail
        return
    assert code in (128 + sig, 2), f"expected exit {128 + sig} (or 0 / 2): {tail}"
    assert "Traceback" not in stderr, f"a traceback: {tail}"
    assert len(errors) == 1, f"{len(errors)} `error:` lines: {tail}"
    if code == 128 + sig:
        assert errors[0].startswith(f"error: stopped by {sig.name}"), tail
        assert set(new) <= {"KILLED"}, f"the stopped run is not KILLED: {tail}"
