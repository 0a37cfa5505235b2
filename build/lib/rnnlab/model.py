"""The language model's architecture: embedding → recurrent core (RNN, GRU or LSTM) → output head.

A plain `nn.Module`, architecture only; optimiser and logging live in the LightningModule.
All three cells share one `forward(tokens, hidden) -> (scores, hidden)`; the cell is picked by one lookup
in `rnnlab.choices.CELLS` (its torch.nn module). Who runs backpropagation through time in training is
explicit, `model.impl`: `torch` always calls the nn module; `rnnlab` runs RNN and GRU layers through
rnnlab.recurrence (the same maths, written out: one matmul per step and a hand-written backward, faster on
a CPU; it also applies `reset_at_eos` and weight drop inside its loop); `auto` (the default) uses
rnnlab.recurrence where it applies (CPU, gradients on, fp32, RNN/GRU) and the nn module elsewhere. Evaluation and sampling (no gradients) always run the nn module. The head (`model.head`) is a linear layer over the vocabulary with a softmax (`full`; scores are
logits) or the adaptive softmax of Grave et al. 2017 (`adaptive`, `torch.nn.AdaptiveLogSoftmaxWithLoss`;
scores are log-probabilities over the full vocabulary, so sampling and the probes treat both alike). For
the loss, `features` + `nll` skip the full distribution: the adaptive head then computes only the clusters
a target falls in, which is its speed-up on large vocabularies, and still the exact NLL of a normalised
distribution over every word. The hidden state is whatever the cell returns (a tensor, or `(h, c)` for the LSTM), so code
that handles it (`detach_hidden`, `reset_hidden_where`) goes through `tree_map` instead of branching on
the cell type. `hidden=None` means the zero state, for every cell.

    model = RNNLM(vocab_size=len(vocab), spec=params.model)   # a ModelSpec, e.g. rnnlab.params.load().model
    logits, hidden = model(x)                          # (B, T, V)
    logits, hidden = model(x_next, detach_hidden(hidden))  # next window of the same streams
    h, hidden = model.features(x); loss = model.nll(h, y)   # the training loss, any head
"""

from __future__ import annotations

import functools
import os
import re
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab import recurrence
from rnnlab.errors import UserError
from rnnlab.choices import CELLS
from rnnlab.schema import ModelSpec
from rnnlab.vocab import EOS_ID

Hidden = Union[torch.Tensor, tuple[torch.Tensor, ...], None]


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def parameter_count(vocab_size: int, spec: ModelSpec) -> int:
    """The model's parameters, counted from its spec (before any is allocated)."""
    E, H, L, g = spec.embedding_size, spec.hidden_size, spec.num_layers, GATES[spec.cell]
    core = g * H * (E + H + 2) + (L - 1) * g * H * (2 * H + 2)
    return vocab_size * E + core + (H + 1) * vocab_size


def check_fits(vocab_size: int, spec: ModelSpec) -> None:
    """Refuse a model whose weights, gradients and optimiser state (4 copies in float32) exceed this
    machine's memory, before allocating it (a huge model.num_layers would otherwise build layer after layer)."""
    need = 16 * parameter_count(vocab_size, spec)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if have and need > have:
        raise UserError(f"the model has {need // 16:,} parameters, {need / 2**30:,.1f} GiB with its gradients and "
                        f"optimiser state, more than this machine's {have / 2**30:,.1f} GiB; lower model.hidden_size, "
                        "model.embedding_size or model.num_layers")


class RNNLM(nn.Module):
    def __init__(self, vocab_size: int, spec: ModelSpec) -> None:
        super().__init__()
        check_fits(vocab_size, spec)
        self.vocab_size, self.spec = vocab_size, spec
        self.embedding = nn.Embedding(vocab_size, spec.embedding_size)
        # The cell's own dropout acts between stacked layers only; with one layer it would just warn.
        between = spec.dropout if spec.num_layers > 1 else 0.0
        self.rnn = getattr(nn, CELLS[spec.cell])(spec.embedding_size, spec.hidden_size, spec.num_layers,
                                    batch_first=True, dropout=between)
        self.drop = nn.Dropout(spec.dropout)
        if spec.head == "adaptive":
            self.head = nn.AdaptiveLogSoftmaxWithLoss(spec.hidden_size, vocab_size, check_cutoffs(spec, vocab_size),
                                                      div_value=spec.div_value)
        else:
            self.head = nn.Linear(spec.hidden_size, vocab_size)
        self._init_weights()
        if spec.tie_weights:
            # Share the input and output embedding (Press & Wolf 2017; Inan et al. 2017).
            self.head.weight = self.embedding.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        r = self.spec.init_range
        if self.spec.init == "uniform":  # every parameter from U(-r, r) (Zaremba et al. 2014)
            for p in self.parameters():
                nn.init.uniform_(p, -r, r)
            return
        # Small uniform embedding and head, as in pytorch/examples word_language_model.
        nn.init.uniform_(self.embedding.weight, -r, r)
        for name, p in self.head.named_parameters():
            if name == "bias":
                nn.init.zeros_(p)
            else:
                nn.init.uniform_(p, -r, r)
        if self.spec.init == "torch":  # the recurrent core keeps PyTorch's U(-1/sqrt(H), 1/sqrt(H))
            return
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                # Orthogonal per gate block: the recurrent map starts norm-preserving (Saxe et al. 2014).
                for gate in p.chunk(p.shape[0] // p.shape[1], dim=0):
                    nn.init.orthogonal_(gate)
            elif name.startswith("bias"):
                nn.init.zeros_(p)
        if self.spec.cell == "lstm":
            # Forget-gate bias 1 so the cell remembers by default (Gers et al. 2000; Jozefowicz et al. 2015).
            # Gate order is i, f, g, o; b_ih + b_hh is what counts, and b_hh stays 0.
            h = self.spec.hidden_size
            for layer in range(self.spec.num_layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[h: 2 * h].fill_(1.0)

    # --- the parts -------------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, E); in training, embedding dropout removes whole words (Gal & Ghahramani 2016)."""
        p = self.spec.embedding_dropout
        if not (self.training and p > 0):
            return self.embedding(tokens)
        keep = self.embedding.weight.new_empty(self.vocab_size, 1).bernoulli_(1 - p) / (1 - p)  # (V, 1)
        return F.embedding(tokens, self.embedding.weight * keep)

    def dropout(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Dropout on (B, T, D); `model.variational`: one mask per sequence, the same at every step."""
        if not (self.training and p > 0):
            return x
        if not self.spec.variational:
            return F.dropout(x, p, True)
        return x * x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p) / (1 - p)

    def core(self, emb: torch.Tensor, hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
        """Embeddings (B, T, E) -> the recurrent core's outputs, dropout applied, ready for the head."""
        out, hidden, _ = self.core_with_raw(emb, hidden)
        return out, hidden

    def core_with_raw(self, emb: torch.Tensor, hidden: Hidden = None,
                      starts: torch.Tensor | None = None) -> tuple[torch.Tensor, Hidden, torch.Tensor]:
        """`core`, and the last layer's outputs before the output dropout (B, T, H), for TAR. `starts` (B, T):
        where to restart from the zero state (`reset_at_eos`), for rnnlab.recurrence only."""
        emb = self.dropout(emb, self.spec.input_dropout)
        if self.hand_written_bptt(emb):
            drop = self.spec.weight_drop if self.training else 0.0
            out, hidden = recurrence.run(self.rnn, emb, hidden, starts, drop)
        elif self.spec.cell == "lstm" and torch.is_autocast_enabled("cpu") and not cpu_runs_bf16_lstm():
            with torch.autocast("cpu", enabled=False):  # this CPU has no bf16 LSTM: the layer runs in fp32
                out, hidden = self.recurrent(emb.float(), tree_map(lambda h: h.float(), hidden))
        else:
            out, hidden = self.recurrent(emb, hidden)  # (B, T, H); hidden (L, B, H) or a tuple of those
        if self.spec.variational:
            return self.dropout(out, self.spec.dropout), hidden, out
        return self.drop(out), hidden, out

    def recurrent(self, emb: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """The torch cell. In training, `model.weight_drop` drops hidden-to-hidden weights (DropConnect, Wan et
        al. 2013; AWD-LSTM's weight drop, Merity et al. 2018): one mask per call, the same at every step, on
        every layer's `weight_hh`. The parameters stay the module's own (checkpoints, DDP and resume see the
        usual names): the dropped copies are passed for this call only (torch.func.functional_call)."""
        p = self.spec.weight_drop
        if not (self.training and p > 0):
            return self.rnn(emb, hidden)
        dropped = {name: F.dropout(w, p, True) for name, w in self.rnn.named_parameters()
                   if name.startswith("weight_hh")}
        return torch.func.functional_call(self.rnn, dropped, (emb, hidden))

    def hand_written_bptt(self, emb: torch.Tensor) -> bool:
        """Whether this call runs rnnlab.recurrence (model.impl, see the module docstring)."""
        if self.spec.impl == "torch" or not torch.is_grad_enabled():
            return False
        usable = recurrence.supports(self.rnn, emb)
        if self.spec.impl == "rnnlab" and not usable:
            raise UserError("model.impl=rnnlab needs a tanh RNN or GRU in fp32 on the CPU; use model.impl=auto "
                            "(rnnlab.recurrence where it applies) or torch")
        return usable

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V): logits (full head) or log-probabilities (adaptive head)."""
        if self.spec.head == "adaptive":
            return self.head.log_prob(h.reshape(-1, h.size(-1))).reshape(*h.shape[:-1], self.vocab_size)
        return self.head(h)

    def nll(self, h: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The negative log-likelihood of `targets` (B, T) given features `h` (B, T, H): "mean", "sum" or
        "none" (one per target, flattened)."""
        if self.spec.head == "adaptive":
            logp = self.head(h.reshape(-1, h.size(-1)), targets.reshape(-1)).output  # target log-probs
            return -{"mean": logp.mean, "sum": logp.sum, "none": lambda: logp}[reduction]()
        logits = self.head(h)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    # --- the whole model ---------------------------------------------------------------------------------

    def forward_from_embeddings(self, emb: torch.Tensor, hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
        """The model after the embedding lookup, so callers can take gradients w.r.t. the inputs."""
        h, hidden = self.core(emb, hidden)
        return self.scores(h), hidden  # (B, T, V)

    def forward(self, tokens: torch.Tensor, hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
        h, hidden = self.features(tokens, hidden)
        return self.scores(h), hidden  # (B, T, V)

    def features(self, tokens: torch.Tensor, hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
        """Tokens (B, T) -> the head's input (B, T, H) and the state after the last step."""
        h, hidden, _ = self.features_with_raw(tokens, hidden)
        return h, hidden

    def features_with_raw(self, tokens: torch.Tensor,
                          hidden: Hidden = None) -> tuple[torch.Tensor, Hidden, torch.Tensor]:
        """`features`, and the last layer's outputs before the output dropout (B, T, H), for TAR."""
        emb = self.embed(tokens)
        if not self.spec.reset_at_eos:
            return self.core_with_raw(emb, hidden)
        # Restart a stream from the zero state wherever its input is <eos> (the start token of a line).
        starts = tokens == EOS_ID  # (B, T)
        if self.hand_written_bptt(emb):  # inside rnnlab.recurrence's loop: one call per window
            return self.core_with_raw(emb, hidden, starts)
        # The torch cells: the window is cut at every step where some row sees <eos>; between cuts the cell
        # runs as usual (one call per piece, so the dropout masks are drawn per piece).
        cuts = [0] + [t for t in starts.any(0).nonzero().flatten().tolist() if t > 0] + [tokens.size(1)]
        pieces, raws = [], []
        for a, b in zip(cuts, cuts[1:]):
            hidden = reset_hidden_where(hidden, starts[:, a])
            h, hidden, raw = self.core_with_raw(emb[:, a:b], hidden)
            pieces.append(h)
            raws.append(raw)
        return torch.cat(pieces, dim=1), hidden, torch.cat(raws, dim=1)  # (B, T, H) each


def activation_penalty(dropped: torch.Tensor, raw: torch.Tensor, ar: float, tar: float) -> torch.Tensor:
    """Activation regularisation and temporal AR (Merity, McCann & Socher 2017, "Revisiting Activation
    Regularization for Language RNNs"; AWD-LSTM's alpha and beta) on the last layer's outputs (B, T, H):
    ar x mean(dropped²) keeps the outputs small; tar x mean((raw_t - raw_{t-1})²), before dropout, keeps
    them slowly changing. Means over every element, as awd-lstm-lm's `.pow(2).mean()`."""
    penalty = dropped.new_zeros(())
    if ar:
        penalty = penalty + ar * dropped.pow(2).mean()
    if tar and raw.size(1) > 1:
        penalty = penalty + tar * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    return penalty


@functools.cache
def cpu_runs_bf16_lstm() -> bool:
    """Whether oneDNN runs an LSTM in bfloat16 on this CPU (it needs AVX-512 BF16 or AMX; without them
    `trainer.precision=bf16-mixed` would stop with "could not create a primitive descriptor")."""
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            nn.LSTM(2, 2, batch_first=True)(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


def check_cutoffs(spec: ModelSpec, vocab_size: int) -> list[int]:
    cutoffs = spec.cutoffs or []
    if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] >= vocab_size:
        raise UserError(f"model.cutoffs={spec.cutoffs}: the adaptive head needs increasing cluster boundaries "
                        f"between 1 and the vocabulary size - 1 ({vocab_size - 1}), e.g. model.cutoffs=[2000,10000]")
    return cutoffs


def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], hidden: Hidden) -> Hidden:
    """Apply `fn` to the state tensor, or to each of LSTM's (h, c); `None` (zero state) stays `None`."""
    if hidden is None:
        return None
    return tuple(fn(h) for h in hidden) if isinstance(hidden, tuple) else fn(hidden)


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph between windows (truncated BPTT) while keeping the state's values."""
    return tree_map(torch.Tensor.detach, hidden)


def reset_hidden_where(hidden: Hidden, mask: torch.Tensor) -> Hidden:
    """Zero the state of the batch rows where `mask` (B,) is true, e.g. streams that just saw <eos>."""
    # The state is (L, B, H) even with batch_first=True.
    return tree_map(lambda h: h.masked_fill(mask[None, :, None], 0.0), hidden)


_CORE_PARAM = re.compile(r"rnn\.(?:weight|bias)_(ih|hh)_l(\d+)")


def param_groups(model: RNNLM) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters by role, for per-group gradient norms: "embedding", "layer{l}.input",
    "layer{l}.recurrent", "head". Each parameter appears once; a tied head weight counts as "embedding"."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():  # named_parameters lists a shared (tied) tensor once
        core = _CORE_PARAM.fullmatch(name)
        if core:
            kind, layer = core.groups()
            group = f"layer{layer}.{'input' if kind == 'ih' else 'recurrent'}"
        else:
            group = name.split(".")[0]
        groups.setdefault(group, []).append((name, p))
    return groups
