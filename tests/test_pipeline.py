"""End to end: the real `dvc repro` and `dvc exp run` in a temporary git repository on a tiny corpus."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time

import pytest

from conftest import GIT, TINY, run, set_args, train_outputs, untracked_files

pytestmark = pytest.mark.slow  # end to end: real dvc, sweeps, servers


def test_dvc_repro_runs_the_five_stages(trained_template, trained_project):
    project, out = trained_project, trained_template.out  # the TINY `dvc repro` that conftest ran once
    for stage in ("prepare", "vocab", "train", "sample", "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert "prepared file corpus (text)" in out and "char vocabulary" in out and "test: loss" in out

    result = json.loads((project / "data" / "eval" / "metrics.json").read_text())
    assert result["split"] == "test" and result["test"]["ppl"] > 1 and result["test"]["bpc"] > 0
    assert 0 <= result["samples"]["novelty_rate"] <= 1 and result["samples"]["mean_length"] > 0
    samples = json.loads((project / "data" / "samples" / "samples.json").read_text())["samples"]
    assert len(samples) == 3 and all(s["stopped"] in ("eos", "max_length") for s in samples)

    db = sqlite3.connect(project / "mlflow.db")  # the repository root's database
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert {"val/loss", "test/ppl", "test/bpc", "samples/novelty_rate", "grad/norm_pre_clip"} <= keys

    again = run(["dvc", "repro"], project).stdout  # the params stage always checks params.yaml against conf/
    assert "Running stage" not in again.replace("Running stage 'params'", ""), again
    # Editing the BPTT maths (a comment is enough) makes DVC see train, sample, evaluate as changed.
    with open(project / "src" / "rnnlab" / "recurrence.py", "a") as fh:
        fh.write("# edited\n")
    status = run(["dvc", "status"], project).stdout
    assert "train:" in status and "modified:           src/rnnlab/recurrence.py" in status
    assert "prepare:" not in status
    run(["git", "checkout", "src/rnnlab/recurrence.py"], project)
    metrics = run(["dvc", "metrics", "show"], project).stdout
    for key in ("data/vocab/stats.json", "coverage", "test.ppl", "test.bpc", "samples.novelty_rate", "val_loss"):
        assert key in metrics

    # conf/ edited but params.yaml not recomposed: noticed, explained, non-zero exit
    conf = project / "conf" / "corpus" / "file.yaml"
    conf.write_text(conf.read_text().replace("lowercase: false", "lowercase: true"))
    stale = run(["dvc", "repro"], project, check=False)
    assert stale.returncode != 0 and "params.yaml is stale: conf/corpus/file.yaml" in stale.stderr + stale.stdout


def test_the_committed_dvc_lock_matches_the_code(project):
    """On a clean checkout `dvc status` may miss outputs, never find code, config or params changed."""
    import shutil

    from conftest import REPO

    shutil.copy(REPO / "dvc.lock", project / "dvc.lock")
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    stale = {stage: entry for stage, entries in status.items() for entry in entries if isinstance(entry, dict)
             for kind, changes in entry.items() if kind == "changed params" or (kind == "changed deps" and any(
                 path.startswith(("src/", "pipeline/", "conf", "params.yaml")) for path in changes))}
    assert not stale, f"dvc.lock is out of date (run `dvc repro` and commit it): {stale}"


COMPARE = ("dvc exp show --no-pager --csv --only-changed --sort-by val_loss --sort-order asc \\\n"
           "  --drop '^(?!(Experiment|val_loss|val_ppl|val_bpc|test\\.loss|test\\.ppl|test\\.bpc|clip_fraction|"
           "(model|trainer|optim|vocab|corpus)\\.(?!name$).+)$).*' \\\n  | column -t -s, -o ' '")


def test_three_experiments_two_queued_compare_in_120_columns_and_a_trained_one_comes_from_the_run_cache(
        trained_project):
    """The README's comparison of three variants of the trained TINY workspace, two run by DVC's queue (`dvc exp
    run --queue -S model=rnn,gru`, `dvc queue start`) and one in the workspace (`dvc exp run`). gru is the
    workspace's own, so it comes back from DVC's run cache without training (no new MLflow run); rnn trains
    in the queue's copy and logs to the root's MLflow database (DVC_ROOT), as does clip 0.01 in the
    workspace. Then back to gru: `dvc repro` restores its training from the run cache, untrained, byte for
    byte."""
    from conftest import REPO

    project = trained_project
    assert COMPARE in (REPO / "README.md").read_text()  # the command users copy
    outputs = train_outputs(project)  # the workspace's training: model, metrics, plots
    trained = json.loads((project / "data" / "eval" / "metrics.json").read_text())["test"]["bpc"]  # the same, evaluated
    run(["dvc", "exp", "run", "--queue", *set_args(TINY), "-S", "model=rnn,gru"], project)
    run(["dvc", "queue", "start", "-j", "1"], project)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status and status.count("Success") == 2, status
    out = run(["dvc", "exp", "run", *set_args([*TINY, "trainer.gradient_clip_val=0.01"])], project).stdout  # clips
    assert "> python pipeline/train.py" in out, out

    table = run(["bash", "-c", COMPARE], project).stdout.splitlines()
    assert max(map(len, table)) <= 120, table
    assert len(table[0].split()) == 10 and table[0].split()[:8] == [
        "Experiment", "val_loss", "val_ppl", "val_bpc", "clip_fraction", "test.loss", "test.ppl", "test.bpc"]
    assert {"model.cell", "trainer.gradient_clip_val"} <= set(table[0].split())  # the params that vary
    assert sum(1 for line in table[1:] if len(line.split()) == 10) == 3, table  # three named experiments, all values
    clipped = table[0].split().index("clip_fraction")
    assert {line.split()[-1]: float(line.split()[clipped]) for line in table[1:] if len(line.split()) == 10} == \
        {"1.0": 0.0, "0.01": 1.0}, table  # TINY's gradients stay under 1.0: only the 0.01 run clips, every step

    rows = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout)))
    exps = {(r["model.name"], r["trainer.gradient_clip_val"]): r for r in rows if r["typ"].startswith("branch")}
    assert sorted(exps) == [("gru", "0.01"), ("gru", "1.0"), ("rnn", "1.0")], sorted(exps)
    assert float(exps["gru", "1.0"]["test.bpc"]) == pytest.approx(trained, rel=1e-4)  # the workspace's, restored
    db = sqlite3.connect(project / "mlflow.db")
    names = {v for (v,) in db.execute("select value from tags where key = 'dvc_exp_name'")}
    assert names == {exps["rnn", "1.0"]["Experiment"], exps["gru", "0.01"]["Experiment"]}  # gru did not train again

    printed = run(["python", "pipeline/report.py", "--dvc"], project).stdout.splitlines()  # the same, with time
    assert max(map(len, printed)) <= 120, printed
    assert printed[0].split() == ["run", "val_loss", "val_ppl", "val_bpc", "test_loss", "test_ppl", "test_bpc",
                                  "clip_frac", "train_s", "cell", "gradient_clip_val"], printed
    rows = [line.split() for line in printed[1:3]]
    assert all(len(r) == 11 and float(r[8]) > 0 for r in rows), printed  # every value there, a training time
    assert printed[4].startswith("2 runs;"), printed  # the experiments that trained (gru came from the run cache)
    print("\n".join(table + [""] + printed))  # for the README (pytest -s)
    run(["dvc", "plots", "show"], project)  # the README's offline plots (dvc_plots/)
    assert not untracked_files(project)  # everything generated is ignored

    assert train_outputs(project) != outputs  # the workspace: clip 0.01's
    run(["python", "-m", "rnnlab.config", *TINY], project)  # back to the first variant
    out = run(["dvc", "repro"], project).stdout
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out, out
    assert "> python pipeline/train.py" not in out
    assert train_outputs(project) == outputs  # model, metrics, plots: the first variant's, restored


def test_sample_from_the_command_line(trained_project):
    project = trained_project
    data = {p: p.read_bytes() for p in (project / "data").rglob("*") if p.is_file()}
    out = run(["python", "pipeline/sample.py", "sample.prime=SPEAKER 1:", "sample.num_samples=2",
               "sample.max_length=10", "sample.seed=3"], project).stdout
    assert out.count("SPEAKER 1:") == 2
    again = run(["python", "pipeline/sample.py", "sample.prime=SPEAKER 1:", "sample.num_samples=2",
                 "sample.max_length=10", "sample.seed=3"], project).stdout
    assert again == out  # same seed, same text
    assert {p: p.read_bytes() for p in (project / "data").rglob("*") if p.is_file()} == data  # writes nothing
    bad = run(["python", "pipeline/sample.py", "sample.temperature=0"], project, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: sample.temperature=0 must be above 0")
    ckpt = project / "data" / "train" / "checkpoints" / "last.ckpt"
    assert run(["python", "pipeline/sample.py", f"sample.checkpoint={ckpt}", "sample.max_length=5"], project).stdout
    missing = run(["python", "pipeline/sample.py", "sample.checkpoint=nope.ckpt"], project, check=False)
    assert missing.returncode == 2 and "no checkpoint at nope.ckpt" in missing.stderr


def test_stage_errors_are_one_line_with_exit_2_and_no_outputs(project):
    run(["python", "-m", "rnnlab.config", "corpus=file", "corpus.path=missing/*.txt"], project)
    proc = run(["python", "pipeline/prepare.py"], project, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: corpus.path 'missing/*.txt' matches no file; check the path (relative to the repository root)"
    ]
    assert not (project / "data" / "prepared").exists()

    bad = run(["python", "-m", "rnnlab.config", "vocab=bpe"], project, check=False)
    assert bad.returncode == 2 and bad.stderr == "error: unknown option vocab=bpe; valid options: char, pretokenized, word\n"
    bad = run(["python", "-m", "rnnlab.config", "colour=red"], project, check=False)
    groups = ", ".join(sorted(d.name for d in (project / "conf").iterdir() if d.is_dir()))  # every group, sorted
    assert bad.returncode == 2 and bad.stderr.endswith(f"; config groups: {groups}\n") and "corpus, " in groups
    assert len(bad.stderr.splitlines()) == 1


def ptb_style_splits(project) -> dict[str, str]:
    """Three pre-tokenised files like PTB's (a leading space, lowercase words, literal <unk>, one sentence a
    line), deterministic; val and test use only training words, so every <unk> in them is a literal one."""
    import random

    rng = random.Random(0)
    words = [a + b for a in ("ba", "ko", "mi", "tu", "se", "ra") for b in ("n", "l", "do", "ve", "pi", "sh", "rk")]
    texts = {}
    for name, lines in (("a.txt", 300), ("b.txt", 40), ("c.txt", 40)):
        texts[name] = "".join(" " + " ".join("<unk>" if rng.random() < 0.15 else rng.choice(words)
                                             for _ in range(rng.randint(4, 14))) + " \n" for _ in range(lines))
        (project / name).write_text(texts[name], encoding="utf-8")
    return texts


def test_dvc_exp_run_of_a_word_model_on_pretokenized_splits_keeps_one_unk_and_never_samples_it(project):
    """A word-level `dvc exp run` on a PTB-shaped corpus given as three files (corpus=file, corpus.splits.*)
    with vocab=pretokenized: the text's <unk> is the vocabulary's own, token counts are the files' words plus
    one <eos> a line, and the samples never show <unk> (rejected and counted, sample.unk=reject). Also a
    user's first quick try: fewer steps than trainer.val_check_interval still end with a validation, so the
    model, metrics, plots and samples all exist; `dvc exp show` and the MLflow run know the experiment."""
    texts = ptb_style_splits(project)
    # TINY's model and sizes; enough steps (and lr) to learn that <unk> is frequent, so samples draw it.
    changed = ("corpus", "trainer.max_steps", "trainer.val_check_interval", "sample.num_samples")
    shrink = [o for o in TINY if not o.startswith(changed)]
    overrides = ["corpus=file", "corpus.splits.train=a.txt", "corpus.splits.val=b.txt", "corpus.splits.test=c.txt",
                 "vocab=pretokenized", "sample.unk=reject", *shrink, "trainer.max_steps=60",
                 "trainer.val_check_interval=100", "optim.lr=0.03", "sample.num_samples=6"]
    run(["python", "-m", "rnnlab.config", *overrides], project)
    run([*GIT, "add", "-A"], project)
    run([*GIT, "commit", "-qm", "ptb-style splits"], project)
    out = run(["dvc", "exp", "run", *set_args(overrides)], project).stdout
    assert "Running stage 'evaluate'" in out

    train = project / "data" / "train"
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["step"] == 60 and metrics["best_step"] == 60 and metrics["val_loss"] > 0
    assert (train / "plots" / "loss.png").exists() and (train / "plots" / "gradient_through_time.png").exists()
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout
    exp = next(r for r in csv.DictReader(io.StringIO(shown)) if r["typ"].startswith("branch"))  # not the workspace
    assert exp["vocab.name"] == "pretokenized" and float(exp["test.bpc"]) > 0 and float(exp["val_loss"]) > 0
    db = sqlite3.connect(project / "mlflow.db")
    assert dict(db.execute("select key, value from tags where key = 'dvc_exp_name'").fetchall()) == {
        "dvc_exp_name": exp["Experiment"]}  # the run knows its DVC experiment

    stats = json.loads((project / "data" / "vocab" / "stats.json").read_text())
    for split, name in (("train", "a.txt"), ("val", "b.txt"), ("test", "c.txt")):
        text = texts[name]
        assert stats["splits"][split]["tokens"] == len(text.split()) + text.count("\n"), split
        assert stats["splits"][split]["unk"] == text.split().count("<unk>"), split  # each literal one, no more
    tokens = json.loads((project / "data" / "vocab" / "vocab.json").read_text())["tokens"]
    assert tokens[:2] == ["<eos>", "<unk>"] and tokens.count("<unk>") == 1  # no second <unk> as a word
    assert len(tokens) == stats["size"] == len(set(texts["a.txt"].split()) - {"<unk>"}) + 2

    samples = project / "data" / "samples"
    assert "<unk>" not in (samples / "samples.txt").read_text()
    saved = json.loads((samples / "samples.json").read_text())
    assert saved["samples"] and all("<unk>" not in s["text"] for s in saved["samples"])
    rate = saved["stats"]["unk_rejection_rate"]  # <unk> draws redrawn, per token drawn
    assert 0 < rate < 1 and rate == sum(s["unk_rejections"] for s in saved["samples"]) / sum(
        s["length"] + (s["stopped"] == "eos") for s in saved["samples"])
    evaluated = json.loads((project / "data" / "eval" / "metrics.json").read_text())
    assert evaluated["samples"]["unk_rejection_rate"] == rate  # a DVC metric, beside test.ppl
    db = sqlite3.connect(project / "mlflow.db")
    logged = db.execute("select value from metrics where key = 'samples/unk_rejection_rate'").fetchall()
    assert logged and logged[-1][0] == pytest.approx(rate)
