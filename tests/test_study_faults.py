"""Generated fault tests of Optuna studies (issue 34): every sweeper setting and search-space string, and
signals at drawn moments of a study, with the basic and the joblib launcher.

    test_generated_intervals          `key=[tag(…, ]interval(low, high)[)]` with drawn bounds and tags
    test_generated_ranges_and_choices  range(…) with drawn ends and steps, choices with repeats
    test_generated_sweeper_settings   n_trials, n_jobs, direction, study_name, sampler, pruner drawn
    test_generated_signals_to_a_study SIGTERM to the sweep's process or SIGINT to its process group (Ctrl-C)
                                      at a drawn moment; then the printed resume command, once

In-process checks call rnnlab.studyspec.checked (what the sweeper calls before the first trial) on drawn
values, milliseconds each, against an oracle written here: a valid value gives a distribution Optuna
samples inside the bounds, an invalid one one `UserError` line naming the key; nothing else may escape.
End to end (subprocesses, `slow`): bad settings stop the sweep before any trial; a study where no trial
completes exits 2 with its parent run FAILED; a signal gives exit 0, or 128 + signal and one `error:`
line, never a traceback or a hang, nothing RUNNING in MLflow or Optuna, no process of the sweep left.
Seed: RNNLAB_FAULT_SEED (default 34); RNNLAB_FAULT_EXAMPLES scales the example counts; each test prints
its seed and how many examples it ran (`pytest -s`).
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from conftest import BIN, TINY, copy_project, run
from rnnlab import studyspec
from rnnlab.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)
SEED = int(os.environ.get("RNNLAB_FAULT_SEED", "34"))
SCALE = float(os.environ.get("RNNLAB_FAULT_EXAMPLES", "1"))
VALID = {"n_trials": 2, "n_jobs": None, "direction": "minimize", "study_name": None, "storage": None,
         "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 1}, "pruner": None, "params": {}}


def budget(examples: int) -> settings:
    return settings(max_examples=max(1, round(examples * SCALE)), deadline=None, database=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


class Count:
    def __init__(self, name: str) -> None:
        self.name, self.n, self.outcomes = name, 0, {}

    def add(self, outcome: str) -> None:
        self.n += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def report(self) -> None:
        print(f"\n{self.name}: seed {SEED}, {self.n} examples; outcomes {self.outcomes}", flush=True)


def outcome(overrides: list[str], **changes):
    """studyspec.checked's answer: the Spec, or the UserError (one line); anything else fails the test."""
    try:
        return studyspec.checked({**VALID, **changes}, overrides)
    except UserError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))
        return err


def sampled_inside(dist, low, high) -> None:
    """Optuna takes the distribution: a trial's value lies within the bounds."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        value = study.ask({"k": dist}).params["k"]
        assert low <= value <= high, (dist, value)


# ---- search-space strings ---------------------------------------------------------------------------------

BOUNDS = [0, 1, -1, 2, 16, 256, 0.5, 1e-5, 1e-1, -0.5, 1.5, 1e300, float("inf"), float("-inf"), float("nan")]


@st.composite
def interval_case(draw):
    if draw(st.booleans()):  # any two bounds: mostly mistakes
        low, high = draw(st.sampled_from(BOUNDS)), draw(st.sampled_from(BOUNDS))
    else:  # two ordered, finite ones: mostly valid (unless a tag says otherwise)
        low, high = sorted(draw(st.lists(st.sampled_from(BOUNDS[:12]), min_size=2, max_size=2, unique=True)))
    tags = draw(st.lists(st.sampled_from(["log", "int", "foo"]), unique=True, max_size=2))
    body = f"interval({low!r}, {high!r})"
    return low, high, tags, "k=" + (f"tag({', '.join(tags)}, {body})" if tags else body)


def test_generated_intervals():
    count = Count("intervals")

    @seed(SEED)
    @budget(150)
    @given(interval_case())
    def one(case):
        low, high, tags, text = case
        got = outcome([text])
        valid = (not set(tags) - {"log", "int"} and math.isfinite(low) and math.isfinite(high) and low < high
                 and ("log" not in tags or low > 0) and ("int" not in tags or (low == int(low) and high == int(high))))
        count.add("valid" if valid else "one line")
        if valid:
            assert not isinstance(got, UserError), f"{text}: {got}"
            sampled_inside(got.dists["k"], low, high)
            assert isinstance(got.dists["k"].low, int) == ("int" in tags) and got.dists["k"].log == ("log" in tags)
        else:
            assert isinstance(got, UserError) and str(got).startswith("k="), f"{text}: {got}"

    try:
        one()
    finally:
        count.report()


@st.composite
def range_or_choice_case(draw):
    if draw(st.booleans()):
        start, stop = draw(st.integers(-3, 6)), draw(st.integers(-3, 6))
        step = draw(st.sampled_from([None, 1, 2, -1, 0]))
        args = f"{start}, {stop}" + (f", {step}" if step is not None else "")
        values = [] if step == 0 else list(range(start, stop, step or 1))
        return f"k=range({args})", values, step == 0
    values = draw(st.lists(st.sampled_from([1, 2, "a", "b", 0.5, "c"]), min_size=1, max_size=4))
    return "k=choice(" + ", ".join(map(str, values)) + ")", values, False


def test_generated_ranges_and_choices():
    count = Count("ranges and choices")

    @seed(SEED)
    @budget(80)
    @given(range_or_choice_case())
    def one(case):
        text, values, zero_step = case
        got = outcome([text])
        repeats = len(set(map(repr, values))) < len(values)
        valid = values and not zero_step and not repeats
        count.add("valid" if valid else "one line")
        if not valid:
            assert isinstance(got, UserError) and str(got).startswith("k"), f"{text}: {got}"
            return
        assert not isinstance(got, UserError), f"{text}: {got}"
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        assert study.ask(got.dists).params["k"] in values

    try:
        one()
    finally:
        count.report()


def test_a_fixed_value_takes_a_key_out_of_the_presets_search():
    preset = {"optim.lr": "tag(log, interval(1e-4, 1e-2))", "model.dropout": "interval(0, 0.5)"}
    spec = outcome(["optim.lr=0.1"], params=preset)
    assert set(spec.dists) == {"model.dropout"} and spec.fixed == ["optim.lr=0.1"]
    assert spec.notes == ["optim.lr: the command line's fixed value replaces the search range "
                          "tag(log, interval(1e-4, 1e-2)) of hydra.sweeper.params (not searched)"]
    spec = outcome(["optim.lr=interval(0.1, 0.2)"], params=preset)  # the command line's own range wins
    assert spec.dists["optim.lr"] == optuna.distributions.FloatDistribution(0.1, 0.2) and not spec.notes
    both = outcome(["optim.lr=0.1", "optim.lr=interval(0.1, 0.2)"])
    assert str(both) == "optim.lr is given twice on the command line; give it one fixed value or one range"
    nothing = outcome(["optim.lr=0.1"], params={"optim.lr": "interval(0.1, 0.2)"})
    assert str(nothing).startswith("the optuna sweeper has no search space")


# ---- sweeper settings -------------------------------------------------------------------------------------

COUNTS = [1, 3, 0, -1, 2.5, "abc", "3", True, None, [], {}]
NAMES = [None, "study-1", "a\\b", "it's", "", " ", "x" * 513, "tab\there", "ünïcode", "a b,c", 7]
PRUNERS = [None, {"_target_": "optuna.pruners.NopPruner"}, {"_target_": "optuna.pruners.MedianPruner"},
           {"_target_": "optuna.pruners.NopPruner", "n_startup_trials": 2}, {"_target_": "optuna.pruners.Nope"},
           {"_target_": "optuna.samplers.RandomSampler"}, "none", {}, {"_target_": "optuna.pruners.MedianPruner",
                                                                        "n_warmup_steps": "x"}]
SAMPLERS = [VALID["sampler"], {"_target_": "optuna.samplers.TPESampler", "seed": 3}, None,
            {"_target_": "optuna.pruners.NopPruner"}, {"_target_": "optuna.samplers.TPESampler", "nope": 1}]


def valid_setting(key: str, value) -> bool:
    """The oracle: the rules docs/sweeps.md states."""
    if key in ("n_trials", "n_jobs"):
        return (value is None and key == "n_jobs") or (type(value) is int and value >= 1)
    if key == "direction":
        return value in ("minimize", "maximize")
    if key == "study_name":
        return value is None or (type(value) in (str, int) and str(value).strip() != "" and len(str(value)) <= 512
                                 and str(value).isprintable())  # a number is a name: study_name=2024
    if key == "pruner":
        return value is None or value in PRUNERS[1:3]
    return value in SAMPLERS[:2]


@st.composite
def settings_case(draw):
    pools = {"n_trials": COUNTS, "n_jobs": COUNTS, "direction": ["minimize", "maximize", "min", None, 1],
             "study_name": NAMES, "pruner": PRUNERS, "sampler": SAMPLERS}
    keys = draw(st.lists(st.sampled_from(sorted(pools)), min_size=1, max_size=2, unique=True))
    return {key: draw(st.sampled_from(pools[key])) for key in keys}


def test_generated_sweeper_settings():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    count = Count("sweeper settings")

    @seed(SEED)
    @budget(120)
    @given(settings_case())
    def one(changes):
        got = outcome(["optim.lr=tag(log, interval(1e-4, 1e-2))"], **changes)
        valid = all(valid_setting(k, v) for k, v in changes.items())
        count.add("valid" if valid else "one line")
        if not valid:
            assert isinstance(got, UserError), f"{changes}: accepted"
            bad = [k for k, v in changes.items() if not valid_setting(k, v)]
            assert any(f"hydra.sweeper.{k}" in str(got) for k in bad), f"{changes}: {got}"
            return
        assert not isinstance(got, UserError), f"{changes}: {got}"
        if "pruner" in changes and changes["pruner"] is None:
            assert isinstance(got.pruner, optuna.pruners.NopPruner)  # null: no pruning
        if isinstance(changes.get("study_name"), str):  # the name reaches the job intact (hydra.job.env_set)
            (parsed,) = OverridesParser.create().parse_overrides([f"k={studyspec.quote(changes['study_name'])}"])
            assert parsed.value() == changes["study_name"]

    try:
        one()
    finally:
        count.report()


def test_a_resumed_study_must_search_its_own_space():
    study = optuna.create_study(study_name="s")
    study.enqueue_trial({"optim.lr": 0.01})
    trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    study.tell(trial, 1.0)
    studyspec.check_same_space(study, {"optim.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)},
                               "mem")
    with pytest.raises(UserError) as err:
        studyspec.check_same_space(study, {"optim.lr": optuna.distributions.FloatDistribution(0.1, 0.2)}, "mem")
    assert str(err.value) == ("the Optuna study 's' in mem searched optim.lr: log interval(0.001, 0.1); this sweep "
                              "searches optim.lr: interval(0.1, 0.2); give the study's space, or a new "
                              "hydra.sweeper.study_name for a new study")


def test_no_pruning_reaches_the_jobs_trial(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from rnnlab import trial as optuna_trial
    from rnnlab.studyspec import STORAGE_ENV, STUDY_ENV, TRIAL_ENV

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    asked = study.ask()
    monkeypatch.setenv(STORAGE_ENV, storage)
    monkeypatch.setenv(STUDY_ENV, "s")
    monkeypatch.setenv(TRIAL_ENV, str(asked._trial_id))
    job = optuna_trial.job_trial(OmegaConf.create({"pruner": None}))
    assert isinstance(job.study.pruner, optuna.pruners.NopPruner)
    job = optuna_trial.job_trial(OmegaConf.create({"pruner": {"_target_": "optuna.pruners.MedianPruner"}}))
    assert isinstance(job.study.pruner, optuna.pruners.MedianPruner)


# ---- end to end -------------------------------------------------------------------------------------------

BASE = [*TINY, "threads=1", "hydra/sweeper=optuna"]
STUDY = [*BASE, "optim.lr=tag(log, interval(1e-4, 1e-1))"]


def states(project: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(MLflow runs' (name, status), Optuna trials' states) in the project's stores."""
    runs = sqlite3.connect(project / "mlflow.db").execute("select name, status from runs").fetchall() \
        if (project / "mlflow.db").exists() else []
    trials = [s for (s,) in sqlite3.connect(project / "optuna.db").execute("select state from trials")] \
        if (project / "optuna.db").exists() else []
    return runs, trials


def one_error_line(proc: subprocess.CompletedProcess | tuple, code: int) -> str:
    rc, stderr = (proc.returncode, proc.stderr) if hasattr(proc, "returncode") else proc
    assert rc == code, f"exit {rc}, not {code}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def study_project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("study"))


@pytest.mark.slow
@pytest.mark.parametrize("bad, says", [
    ("hydra.sweeper.n_trials=abc", "error: hydra.sweeper.n_trials='abc' must be a whole number of at least 1"),
    ("model.dropout=interval(0.5, 0.1)", "error: model.dropout=interval(0.5, 0.1): give finite bounds with low < high"),
])
def test_bad_settings_stop_the_sweep_before_any_trial(study_project, bad, says):
    before, _ = states(study_project)
    proc = run(["python", "pipeline/sweep.py", "-m", *STUDY, bad], study_project, check=False)
    assert one_error_line(proc, 2) == says
    runs, trials = states(study_project)
    assert runs[len(before):] == [(runs[-1][0], "FAILED")] and runs[-1][0].startswith("sweep ")  # the parent only
    assert "RUNNING" not in trials


@pytest.mark.slow
def test_a_study_where_no_trial_completes_fails_with_one_line(study_project):
    before, _ = states(study_project)
    proc = run(["python", "pipeline/sweep.py", "-m", *BASE, "optim=sgd", "trainer.gradient_clip_val=0",
                "optim.lr=tag(log, interval(1e20, 1e21))", "trainer.max_steps=10", "trainer.val_check_interval=5",
                "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=diverging",
                "hydra.sweeper.pruner=null"], study_project, check=False)  # no pruning, as documented
    assert one_error_line(proc, 2).startswith("error: no trial of the Optuna study 'diverging' completed (2 FAIL;")
    runs, _ = states(study_project)
    assert sorted(status for _, status in runs[len(before):]) == ["FAILED"] * 3  # 2 diverged trials, the parent
    study = optuna.load_study(study_name="diverging", storage=f"sqlite:///{study_project / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]


# ---- signals at drawn moments -----------------------------------------------------------------------------

SIGNAL_TIMEOUT_S = 240  # a study of the tiny config ends in well under this; longer is a hang
CASES_PER_LAUNCHER = max(1, round(2 * SCALE))
LAUNCHERS = {"basic": ["hydra.sweeper.n_trials=3"],
             "joblib": ["hydra.sweeper.n_trials=4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


# Where the drawn delay starts, in turn: the first trial's MLflow run open (its training), the first trial
# asked (the shared data being prepared), the launch (the first second, the interpreter's own start, not drawn).
ANCHORS = ("a trial's run open", "a trial asked", "launch")


def draw_case(rng: random.Random, number: int, first: int) -> tuple[signal.Signals, str, float]:
    """SIGTERM to the sweep's process (`kill`) or SIGINT to its process group (Ctrl-C), in turn from a drawn
    first one, a drawn delay after the case's anchor."""
    sig = (signal.SIGTERM, signal.SIGINT)[(first + number) % 2]
    anchor = ANCHORS[number % len(ANCHORS)]
    return sig, anchor, rng.uniform(1.0, 15.0) if anchor == "launch" else rng.uniform(0.0, 4.0)


def reached(project: Path, anchor: str, trials_before: int) -> bool:
    """Has the sweep reached `anchor` (a new trial in optuna.db, or a RUNNING child run in mlflow.db)?"""
    db, query = (("optuna.db", "select count(*) > ? from trials") if anchor == "a trial asked" else
                 ("mlflow.db", "select count(*) > ? from runs where status = 'RUNNING' and name not like 'sweep %'"))
    if not (project / db).exists():
        return False
    try:
        with sqlite3.connect(project / db, timeout=0.1) as con:
            return bool(con.execute(query, (trials_before if anchor == "a trial asked" else 0,)).fetchone()[0])
    except sqlite3.Error:
        return False


def signalled_study(project: Path, args: list[str], sig, anchor: str, delay: float) -> tuple[int | str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    log = project / f"stderr-{time.monotonic_ns()}"
    with open(log, "w") as err:
        proc = subprocess.Popen(["python", "pipeline/sweep.py", "-m", *args], cwd=project, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        launched, trials_before = time.monotonic(), len(states(project)[1])
        try:
            while anchor != "launch" and not reached(project, anchor, trials_before) and proc.poll() is None \
                    and time.monotonic() < launched + SIGNAL_TIMEOUT_S:
                time.sleep(0.05)
            time.sleep(delay)
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the whole group
            else:
                proc.send_signal(sig)
            code = proc.wait(timeout=SIGNAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = "hang"
        finally:
            left = survivors(proc.pid)
            if left:
                os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"processes of the sweep outlived it: {left}"
    return code, log.read_text()


def survivors(pgid: int) -> list[str]:
    """Processes of the sweep's process group still alive (zombies aside) a moment after it ended."""
    import psutil

    for _ in range(20):
        alive = []
        for p in psutil.process_iter(["pid", "status", "cmdline"]):
            try:
                if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(p.info["cmdline"] or [])[:100])
            except (ProcessLookupError, psutil.Error):
                continue
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def check_stopped(project: Path, sig, code, stderr: str, runs_before: int) -> str | None:
    """The contract; returns the resume command a stopped study printed (None if it finished first)."""
    runs, trials = states(project)
    new = runs[runs_before:]
    assert code != "hang", f"no exit {SIGNAL_TIMEOUT_S} s after {sig.name}: {stderr[-3000:]}"
    assert all(status != "RUNNING" for _, status in new), f"an MLflow run left RUNNING: {new}"
    assert "RUNNING" not in trials, f"an Optuna trial left RUNNING: {trials}"
    if code == 0:  # the study finished before the signal
        assert "error:" not in stderr and all(status == "FINISHED" for _, status in new), new
        return None
    line = one_error_line((code, stderr), 128 + sig)
    assert line.startswith(f"error: stopped by {sig.name}"), line
    parents = [status for name, status in new if name.startswith("sweep ")]
    assert parents in ([], ["KILLED"]), new  # none yet when the signal came before the sweep started
    assert all(status in ("FINISHED", "KILLED", "FAILED") for _, status in new), new
    found = re.search(r"resume it with: (.*)$", line)
    return found.group(1) if found else None


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_generated_signals_to_a_study(tmp_path, launcher):
    rng = random.Random(f"{SEED}-{launcher}")
    project = copy_project(tmp_path)
    args = [*STUDY, "trainer.max_steps=60", "trainer.val_check_interval=20", *LAUNCHERS[launcher]]
    resumed, first = False, rng.randrange(2)
    for number in range(CASES_PER_LAUNCHER):
        sig, anchor, delay = draw_case(rng, number, first)
        runs_before = len(states(project)[0])
        code, stderr = signalled_study(project, [*args, f"hydra.sweeper.study_name=s{number}"] if number else args,
                                       sig, anchor, delay)
        print(f"\n[{launcher} #{number + 1}] seed {SEED}: {sig.name} {delay:.2f}s after {anchor} -> exit {code}; "
              f"{(stderr.strip().splitlines() or [''])[-1][:160]}", flush=True)
        advice = check_stopped(project, sig, code, stderr, runs_before)
        if advice and not resumed and launcher == "basic":
            check_resume(project, advice)
            resumed = True
    print(f"signals ({launcher}): seed {SEED}, {CASES_PER_LAUNCHER} examples", flush=True)


def check_resume(project: Path, advice: str) -> None:
    """The printed command resumes the same study: it runs only the trials the study lacks; the same
    study with another space is one line naming both."""
    name = re.search(r"hydra\.sweeper\.study_name=(\S+)", advice).group(1).strip("'")
    storage = f"sqlite:///{project / 'optuna.db'}"
    done = [t for t in optuna.load_study(study_name=name, storage=storage).trials
            if t.state.name != "FAIL" or not t.user_attrs.get("rnnlab.interrupted")]
    proc = run(["bash", "-c", advice], project, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = optuna.load_study(study_name=name, storage=storage).trials
    finished = [t for t in after if not t.user_attrs.get("rnnlab.interrupted")]
    assert len(finished) == 3 and [t.number for t in done] == [t.number for t in finished][:len(done)], after
    other = run(["bash", "-c", advice.replace("interval(1e-4, 1e-1)", "interval(0.2, 0.3)")], project, check=False)
    assert one_error_line(other, 2).startswith(f"error: the Optuna study '{name}' in {storage} searched optim.lr: "
                                               "log interval(0.0001, 0.1); this sweep searches optim.lr: "
                                               "log interval(0.2, 0.3); give the study's space")
