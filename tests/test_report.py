"""The comparison table: headline metrics and the params that vary, within 120 columns, read from real MLflow runs."""

import pytest
from mlflow.tracking import MlflowClient

from rnnlab import report


def make_runs(db, variants):
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("rnnlab")
    for i, params in enumerate(variants):
        run = client.create_run(exp, run_name=f"gru-char-h256-clip{params['trainer/gradient_clip_val']}-{i:04x}")
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in {"best/val_loss": 1.5 + i, "best/val_ppl": 4.48 + i, "best/val_bpc": 2.2, "val/loss": 1.6,
                           "test/loss": 1.52, "test/ppl": 4.57, "test/bpc": 2.19, "time/train_s": 187.3}.items():
            client.log_metric(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "grad/clip_fraction", 0.25)
        client.log_metric(run.info.run_id, "grad/clip_fraction", 0.75)
        client.set_terminated(run.info.run_id)
    return client, client.search_runs([exp], order_by=["attributes.start_time ASC"])


def test_the_table_shows_metrics_and_only_the_varied_params(fresh_mlflow_db, tmp_path):
    common = {"model/name": "gru", "paths/train": "data/train", "model/hidden_size": "256"}
    client, runs = make_runs(fresh_mlflow_db, [common | {"model/cell": "gru", "trainer/gradient_clip_val": "1.0"},
                                                common | {"model/cell": "rnn", "trainer/gradient_clip_val": "1.0"},
                                                common | {"model/cell": "rnn", "trainer/gradient_clip_val": "0",
                                                          "paths/train": "elsewhere"}])
    table = report.write(client, runs, tmp_path / "out", "three").splitlines()
    assert table[0].split() == ["run", "val_loss", "val_ppl", "val_bpc", "test_loss", "test_ppl", "test_bpc",
                                "clip_frac", "train_s", "cell", "gradient_clip_val"]
    assert table[1].split()[1:] == ["1.5", "4.48", "2.2", "1.52", "4.57", "2.19", "0.5", "187.3", "gru", "1.0"]
    assert table[3].split()[-2:] == ["rnn", "0"] and len(table) == 4
    assert (tmp_path / "out" / "report.md").read_text().count("187.3") == 3


def test_a_wide_table_breaks_into_blocks_of_at_most_120_columns(fresh_mlflow_db, tmp_path):
    variants = [{f"model/option_{k}": f"value-{i}-{'x' * 20}" for k in range(8)} | {"trainer/gradient_clip_val": "1"}
                for i in range(2)]
    client, runs = make_runs(fresh_mlflow_db, variants)
    table = report.write(client, runs, tmp_path / "out", "wide")
    lines = table.splitlines()
    assert max(map(len, lines)) <= 120 and lines.count("") >= 2  # several blocks, a blank line between
    assert all(block.startswith("run ") for block in table.split("\n\n"))
    assert all(f"option_{k}" in table for k in range(8))


def test_a_report_folder_that_cannot_be_made_is_one_line(tmp_path):
    from rnnlab import report
    from rnnlab.errors import UserError

    (tmp_path / "reports").write_text("a file where the folder goes\n")
    with pytest.raises(UserError, match=r"^cannot make the folder .*reports/sweep: .*; .*reports is a file, not a "
                                        r"folder: move it, or choose another folder$"):
        report.write(None, [], tmp_path / "reports" / "sweep", "title")
