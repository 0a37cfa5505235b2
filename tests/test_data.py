"""Stream batching: batchify layout, window continuity and shift, the DataModule, and the short-split error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import conf_spec
from rnnlab.data import StreamDataModule, StreamWindows
from rnnlab.errors import UserError
from rnnlab.scoring import batchify


def test_batchify_rows_are_contiguous_chunks_and_remainder_is_dropped():
    ids = np.arange(26, dtype=np.uint16)
    data = batchify(ids, 4)
    assert data.dtype == torch.int64 and data.shape == (4, 6)
    for r in range(4):
        assert data[r].tolist() == list(range(6 * r, 6 * r + 6))


def test_windows_continue_each_other_and_y_is_x_shifted():
    ids = np.arange(26, dtype=np.uint16)  # B = 4 -> N = 6 -> 5 targets a row -> windows of 2, 2, 1
    windows = StreamWindows(ids, batch_size=4, bptt=2)
    assert len(windows) == 3
    xs, ys = zip(*windows)
    assert [x.shape for x in xs] == [(4, 2), (4, 2), (4, 1)]  # the last window is shorter, not dropped
    for x, y in zip(xs, ys):
        assert torch.equal(y, x + 1)  # ids are consecutive, so "shifted by one" is "+1"
    # Concatenating the windows restores each row's stream: window k+1 continues window k.
    torch.testing.assert_close(torch.cat(xs, dim=1), batchify(ids, 4)[:, :-1])
    torch.testing.assert_close(torch.cat(ys, dim=1), batchify(ids, 4)[:, 1:])
    with pytest.raises(IndexError):
        windows[3]


def test_exact_fit_has_no_empty_window():
    windows = StreamWindows(np.arange(2 * 7), batch_size=2, bptt=3)  # N = 7 -> 6 targets -> 2 full windows
    assert [x.shape[1] for x, _ in windows] == [3, 3]


def test_short_split_is_a_user_error_naming_split_and_size():
    with pytest.raises(UserError, match=r"val split has 20 tokens.*data\.batch_size.*data\.bptt"):
        StreamWindows(np.arange(20), batch_size=4, bptt=5, split="val")  # 20 // 4 = 5 < bptt + 1


def write_splits(tmp_path, sizes: dict[str, int]):
    tmp_path.mkdir(exist_ok=True)
    for split, n in sizes.items():
        np.save(tmp_path / f"{split}.npy", (np.arange(n) % 50).astype(np.uint16))
    return tmp_path


def test_datamodule_yields_whole_batches_in_stream_order(tmp_path):
    dm = StreamDataModule(write_splits(tmp_path, {"train": 1000, "val": 300, "test": 300}),
                          conf_spec("data", batch_size=4, bptt=7, eval_batch_size=2))
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == -(-249 // 7)  # N = 250
    x0, y0 = batches[0]
    assert x0.shape == y0.shape == (4, 7) and x0.dtype == torch.int64
    torch.testing.assert_close(batches[1][0][:, 0], y0[:, -1])  # window 1 starts where window 0's targets end
    assert next(iter(dm.val_dataloader()))[0].shape == (2, 7)


def test_datamodule_short_split_and_missing_split(tmp_path):
    dm = StreamDataModule(write_splits(tmp_path, {"train": 1000, "val": 10}), conf_spec("data", batch_size=4, bptt=7, eval_batch_size=2))
    with pytest.raises(UserError, match="val split has 10 tokens"):
        dm.val_dataloader()
    dm = StreamDataModule(write_splits(tmp_path / "only_val", {"val": 300}), conf_spec("data", batch_size=4, bptt=7, eval_batch_size=2))
    with pytest.raises(UserError, match="no encoded train split.*dvc repro vocab"):
        dm.train_dataloader()
    with pytest.raises(UserError, match="data.bptt=0"):
        StreamDataModule(tmp_path, conf_spec("data", batch_size=4, bptt=0, eval_batch_size=2))


def test_data_parallel_processes_own_contiguous_shares_of_the_streams():
    """DDP with W processes: process r gets rows r*B/W ... of every window, in order; together they are the
    single process's batch, so the all-reduced gradient is the single process's."""
    ids = np.arange(4 * 40)
    whole = StreamWindows(ids, batch_size=4, bptt=5)
    parts = [StreamWindows(ids, batch_size=4, bptt=5, part=(rank, 2)) for rank in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for k in range(len(whole)):
        for i in (0, 1):  # x, then y
            torch.testing.assert_close(torch.cat([parts[0][k][i], parts[1][k][i]]), whole[k][i])


def test_a_batch_that_does_not_divide_among_processes_is_a_user_error(tmp_path):
    from types import SimpleNamespace

    dm = StreamDataModule(write_splits(tmp_path, {"train": 1000, "val": 300}), conf_spec("data", batch_size=6, bptt=7, eval_batch_size=4))
    dm.trainer = SimpleNamespace(global_rank=0, world_size=4)
    with pytest.raises(UserError, match=r"data.batch_size=6 does not divide among 4 processes"):
        dm.setup("fit")
