"""End to end: the real `dvc repro` and `dvc exp run` in a temporary git repository on a tiny corpus."""

from __future__ import annotations

import json

from conftest import run


def test_dvc_repro_prepare_and_vocab(project):
    run(["python", "-m", "rnnlab.config", "corpus=file", "corpus.path=tiny.txt"], project)
    out = run(["dvc", "repro"], project).stdout
    assert "prepared file corpus (text)" in out and "char vocabulary" in out
    stats = json.loads((project / "data" / "vocab" / "stats.json").read_text())
    assert stats["level"] == "char" and stats["size"] > 10
    assert "up to date" in run(["dvc", "repro"], project).stdout

    metrics = run(["dvc", "metrics", "show"], project).stdout
    assert "data/vocab/stats.json" in metrics and "coverage" in metrics

    # conf/ edited but params.yaml not recomposed: noticed, explained, non-zero exit
    char = project / "conf" / "corpus" / "file.yaml"
    char.write_text(char.read_text().replace("lowercase: false", "lowercase: true"))
    stale = run(["dvc", "repro"], project, check=False)
    assert stale.returncode != 0 and "params.yaml is stale: conf/corpus/file.yaml" in stale.stderr + stale.stdout


def test_dvc_exp_run_builds_a_word_vocabulary(project):
    run(["python", "-m", "rnnlab.config", "corpus=file", "corpus.path=tiny.txt"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "tiny"], project)
    run(["dvc", "exp", "run", "-S", "vocab=word", "-S", "corpus=file", "-S", "corpus.path=tiny.txt"], project)
    stats = json.loads((project / "data" / "vocab" / "stats.json").read_text())
    assert stats["level"] == "word"
    assert "tokens" not in json.loads((project / "data" / "vocab" / "vocab.json").read_text())["tokens"][:2]
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout
    assert "vocab.name" in shown and "word" in shown


def test_stage_errors_are_one_line_with_exit_2_and_no_outputs(project):
    run(["python", "-m", "rnnlab.config", "corpus=file", "corpus.path=missing/*.txt"], project)
    proc = run(["python", "pipeline/prepare.py"], project, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: corpus.path 'missing/*.txt' matches no file; check the path (relative to the repository root)"
    ]
    assert not (project / "data" / "prepared").exists()

    bad = run(["python", "-m", "rnnlab.config", "vocab=bpe"], project, check=False)
    assert bad.returncode == 2 and bad.stderr == "error: unknown option vocab=bpe; valid options: char, word\n"
    bad = run(["python", "-m", "rnnlab.config", "colour=red"], project, check=False)
    assert bad.returncode == 2 and "config groups: corpus" in bad.stderr and len(bad.stderr.splitlines()) == 1
