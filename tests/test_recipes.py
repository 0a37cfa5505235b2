"""The published recipes (conf/experiment/{zaremba_small,zaremba_medium,wlm,awd_small,awd_small_256,awd_small_long,
awd_small_300}.yaml), offline.

Each recipe is composed from the real conf/ exactly as `+experiment=<name>` does; the tests check the values
that define it, its parameter count on PTB's 10,000-word vocabulary (exact, by formula), and that its
model, optimiser, schedule and Trainer settings train as composed (one batch per epoch of a tiny
pre-tokenised corpus: only the data is small).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from conftest import REPO, conf_spec
from rnnlab import config, vocab
from rnnlab.schema import VocabSpec

RECIPES = ("zaremba_small", "zaremba_medium", "wlm", "awd_small", "awd_small_256", "awd_small_long", "awd_small_300")
PTB_VOCAB = 10_000


@functools.lru_cache(maxsize=None)
def recipe(name: str, *overrides: str):
    """conf/ with the experiment `name` (a frozen Params: each recipe is composed once per worker)."""
    return config.compose([f"+experiment={name}", *overrides], REPO / "conf")


def lstm_params(inputs: int, hidden: int) -> int:
    """One nn.LSTM layer: four gates, each with W_ih, W_hh, b_ih and b_hh (as main.lua's i2h + h2h)."""
    return 4 * (hidden * inputs + hidden * hidden + 2 * hidden)


def lm_params(v: int, e: int, h: int, layers: int, tied: bool) -> int:
    """Embedding + LSTM layers + softmax weights and bias; a tied softmax shares the embedding."""
    core = lstm_params(e, h) + (layers - 1) * lstm_params(h, h)
    return v * e + core + (0 if tied else h * v) + v


def differences(a, b) -> dict[tuple[str, str], object]:
    """{(section, key): a's value} wherever two composed configs differ in what trains and evaluates."""
    return {(s, k): v for s in ("model", "optim", "data", "trainer", "evaluate")
            for k, v in a.section(s).items() if v != b.section(s)[k]}


# --- what defines each recipe -----------------------------------------------------------------------------


@pytest.mark.slow  # composes every recipe
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_a_word_level_lstm_on_ptb_trained_by_epochs(name):
    cfg = recipe(name)  # composed and validated (rnnlab.schema), as `dvc exp run -S +experiment=...`
    assert cfg.choices["corpus"] == "ptb" and cfg.choices["vocab"] == "pretokenized"
    assert cfg.vocab.level == "word" and cfg.vocab.tokenizer == "whitespace" and cfg.vocab.min_freq == 1
    assert cfg.vocab.max_size is None and cfg.vocab.unk_token == "<unk>"
    assert cfg.model.cell == "lstm" and cfg.model.num_layers == 2 and cfg.model.head == "full"
    assert cfg.optim.algorithm == "sgd" and cfg.optim.momentum == 0
    assert cfg.trainer.max_steps == -1 and cfg.trainer.max_epochs > 0  # epochs are the budget
    assert cfg.trainer.val_check_interval == 1.0 and cfg.trainer.check_val_every_n_epoch == 1  # once per epoch
    assert cfg.trainer.limit_val_batches == 1.0 and cfg.trainer.gradient_clip_algorithm == "norm"
    assert cfg.data.batch_size == 20 and cfg.sample.unk == "reject"
    assert cfg.evaluate.batch_size == cfg.data.eval_batch_size


def test_zaremba_small_is_the_non_regularised_lstm_of_main_lua():
    cfg = recipe("zaremba_small")
    m, o, t, d = cfg.model, cfg.optim, cfg.trainer, cfg.data
    assert (m.embedding_size, m.hidden_size, m.dropout, m.input_dropout) == (200, 200, 0.0, 0.0)
    assert (m.init, m.init_range, m.tie_weights, m.variational) == ("uniform", 0.1, False, False)
    assert (o.schedule, o.step_start_epoch, o.step_factor, o.weight_decay) == ("step", 4, 0.5, 0.0)
    assert (d.bptt, t.max_epochs) == (20, 13)
    # Zaremba's lr 1 / clip 5 act on a loss summed over the window's steps; ours is the mean over them.
    assert o.lr / d.bptt == 1.0 and t.gradient_clip_val * d.bptt == pytest.approx(5.0)


def test_zaremba_medium_is_the_regularised_650_unit_lstm():
    cfg = recipe("zaremba_medium")
    m, o, t, d = cfg.model, cfg.optim, cfg.trainer, cfg.data
    assert (m.embedding_size, m.hidden_size, m.dropout, m.input_dropout) == (650, 650, 0.5, 0.5)
    assert (m.init, m.init_range, m.variational) == ("uniform", 0.05, False)
    assert (o.schedule, o.step_start_epoch) == ("step", 6) and o.step_factor * 1.2 == pytest.approx(1.0)
    assert (d.bptt, t.max_epochs) == (35, 39)
    assert o.lr / d.bptt == 1.0 and t.gradient_clip_val * d.bptt == pytest.approx(5.0)


def test_wlm_is_pytorch_examples_defaults():
    cfg = recipe("wlm")
    m, o, t, d = cfg.model, cfg.optim, cfg.trainer, cfg.data
    assert (m.embedding_size, m.hidden_size, m.dropout, m.input_dropout) == (200, 200, 0.2, 0.2)
    assert (m.init, m.init_range, m.tie_weights, m.variational) == ("torch", 0.1, False, False)
    assert (o.lr, o.schedule, o.plateau_factor, o.plateau_patience) == (20.0, "plateau", 0.25, 0)
    assert (d.bptt, d.eval_batch_size, t.max_epochs, t.gradient_clip_val) == (35, 10, 40, 0.25)
    assert recipe("wlm", "corpus=wikitext2").choices["corpus"] == "wikitext2"  # its current default data


def test_awd_small_is_zaremba_small_sized_tied_and_regularised():
    cfg, small = recipe("awd_small"), recipe("zaremba_small")
    m = cfg.model
    assert (m.embedding_size, m.hidden_size) == (small.model.embedding_size, small.model.hidden_size)
    assert m.tie_weights and m.variational and m.embedding_dropout > 0
    assert 0 < m.dropout < 0.5 and 0 < m.input_dropout < 0.5
    assert cfg.trainer.max_epochs == small.trainer.max_epochs and cfg.optim.schedule == "step"


def test_awd_small_long_is_awd_small_256_with_weight_drop_and_a_longer_lr_20_phase():
    long, short = recipe("awd_small_long"), recipe("awd_small_256")
    assert long.model.weight_drop == 0.2 and short.model.weight_drop == 0.0
    assert (long.trainer.max_epochs, long.optim.step_start_epoch) == (28, 22)  # six halvings, epochs 23-28
    assert set(differences(long, short)) == {("model", "weight_drop"), ("optim", "step_start_epoch"),
                                              ("trainer", "max_epochs")}


def test_awd_small_300_is_awd_small_long_wider_with_a_shorter_lr_20_phase():
    wide, long = recipe("awd_small_300"), recipe("awd_small_long")
    assert (wide.model.embedding_size, wide.model.hidden_size) == (300, 300) and wide.model.tie_weights
    assert (wide.trainer.max_epochs, wide.optim.step_start_epoch) == (21, 15)  # six halvings, epochs 16-21
    assert set(differences(wide, long)) == {("model", "embedding_size"), ("model", "hidden_size"),
                                            ("optim", "step_start_epoch"), ("trainer", "max_epochs")}


@pytest.mark.slow  # composes every ablation
def test_the_ablation_sweep_is_awd_small_plus_one_addition_at_a_time():
    sweep = yaml.safe_load((REPO / "conf" / "experiment" / "awd_ablation.yaml").read_text())["hydra"]["sweeper"]
    options = sweep["params"]["ablation"].split(",")
    assert options == ["none", "weight_drop", "ar_tar", "variable_bptt", "nt_asgd"]
    assert set(options) == set(config.group_options("ablation", REPO / "conf"))
    full, base = recipe("awd_small_full"), recipe("awd_small")
    adds = {"none": {}, "weight_drop": {("model", "weight_drop"): full.model.weight_drop},
            "ar_tar": {("optim", "ar"): full.optim.ar, ("optim", "tar"): full.optim.tar},
            "variable_bptt": {("data", "variable_bptt"): True},
            "nt_asgd": {("optim", "schedule"): "none", ("optim", "nonmono"): 2}}
    for option in options:
        job = recipe("awd_ablation", f"ablation={option}")  # what the sweep's job composes
        assert recipe("awd_small", f"+ablation={option}") == job  # and the one-job command
        assert differences(job, base) == adds[option], option


def test_pretokenized_vocab_has_the_keys_of_the_word_vocab():
    word = yaml.safe_load((REPO / "conf" / "vocab" / "word.yaml").read_text())
    pretokenized = yaml.safe_load((REPO / "conf" / "vocab" / "pretokenized.yaml").read_text())
    assert set(pretokenized) == set(word)
    spec = config.compose(["vocab=pretokenized"], REPO / "conf").vocab
    assert spec == conf_spec("vocab", level="word", tokenizer="whitespace", min_freq=1, max_size=None, lowercase=False)


# --- parameter counts on PTB's vocabulary -----------------------------------------------------------------


@pytest.mark.slow  # builds each recipe's full-size model
@pytest.mark.parametrize("name, expected", [("zaremba_small", 4_653_200), ("zaremba_medium", 19_780_400),
                                            ("wlm", 4_653_200), ("awd_small", 2_653_200),
                                            ("awd_small_256", 3_622_672), ("awd_small_long", 3_622_672),
                                            ("awd_small_300", 4_454_800)])
def test_parameter_count_on_a_10k_vocabulary(name, expected):
    from rnnlab.model import RNNLM

    m = recipe(name).model
    assert lm_params(PTB_VOCAB, m.embedding_size, m.hidden_size, m.num_layers, m.tie_weights) == expected
    model = RNNLM(PTB_VOCAB, m)
    assert sum(p.numel() for p in model.parameters()) == expected  # a tied tensor is listed once
    if m.tie_weights:
        assert model.head.weight is model.embedding.weight
        untied = lm_params(PTB_VOCAB, m.embedding_size, m.hidden_size, m.num_layers, tied=False)
        assert expected == untied - PTB_VOCAB * m.hidden_size  # zaremba_small's 4,653,200 less the softmax


# --- the composed sections train --------------------------------------------------------------------------


def tiny_ptb(out: Path, spec: VocabSpec) -> Path:
    """A pre-tokenised corpus in PTB's shape (lowercase words, literal <unk>), encoded with the recipe's vocab."""
    words = [f"w{i}" for i in range(40)]
    lines = [" ".join(words[(7 * n + 3 * k) % 40] if (n + k) % 9 else "<unk>" for k in range(10))
             for n in range(240)]
    texts = {"train": "\n".join(lines[:160]) + "\n", "val": "\n".join(lines[160:]) + "\n"}
    vocab.build_and_encode(texts, spec, line_corpus=False, out_dir=out)
    return out


def epoch_lr_recorder():
    """A Lightning callback that records the learning rate each training epoch used (at its first batch)."""
    import lightning.pytorch as pl

    class EpochLR(pl.Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == 0:
                self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    return EpochLR()


def train_recipe(cfg, vocab_dir: Path, epochs: int) -> tuple[list[float], list]:
    """`epochs` epochs of one training batch each, with the recipe's model, optimiser, schedule and Trainer
    settings (only the limits changed); returns the lr of every epoch and the validation history."""
    import lightning.pytorch as pl

    from rnnlab.data import StreamDataModule
    from rnnlab.lit import LitLM
    from rnnlab.params import build
    from rnnlab.schema import TrainerSpec

    pl.seed_everything(0, verbose=False)
    voc = vocab.VocabDir(vocab_dir).vocab()
    lit = LitLM(len(voc), voc.hash, cfg.model, cfg.optim)
    dm = StreamDataModule(vocab_dir, cfg.data)
    limits = {"max_epochs": epochs, "limit_train_batches": 1, "limit_val_batches": 1, "accelerator": "cpu"}
    # the recipe's section, checked as the train stage checks it (limit_train_batches: a further Lightning argument)
    kwargs = build(TrainerSpec, "trainer", cfg.section("trainer") | limits).kwargs()
    lr = epoch_lr_recorder()
    trainer = pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[lr])
    trainer.fit(lit, dm)
    assert trainer.global_step == epochs
    return lr.lrs, lit.history["val"]


@pytest.mark.slow  # trains each recipe (Lightning)
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_and_its_schedule_follows_the_epochs(name, tmp_path):
    cfg = recipe(name)
    vocab_dir = tiny_ptb(tmp_path / "vocab", cfg.vocab)
    assert vocab.VocabDir(vocab_dir).vocab().tokens.count("<unk>") == 1
    epochs = cfg.optim.step_start_epoch + 1 if cfg.optim.schedule == "step" else 3
    lrs, val = train_recipe(cfg, vocab_dir, epochs)
    assert len(val) == epochs and all(row[1] > 0 for row in val)  # one finite validation per epoch
    base = cfg.optim.lr
    if cfg.optim.schedule == "step":  # epoch e trains with lr x factor^max(0, e - start)
        start, factor = cfg.optim.step_start_epoch, cfg.optim.step_factor
        assert lrs == pytest.approx([base * factor ** max(0, e - start) for e in range(1, epochs + 1)])
    else:  # plateau: lr / 4 after a validation that did not improve
        assert lrs[0] == base and all(b in (pytest.approx(a), pytest.approx(a * 0.25)) for a, b in zip(lrs, lrs[1:]))
