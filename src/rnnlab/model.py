"""The language model's architecture: embedding → recurrent core (RNN, GRU or LSTM) → linear head.

A plain `nn.Module`, architecture only; loss, optimiser and logging live in the LightningModule.
All three cells share one `forward(tokens, hidden) -> (logits, hidden)`; the cell is picked by one lookup
in `CELLS`. The hidden state is whatever the cell returns (a tensor, or `(h, c)` for the LSTM), so code
that handles it (`detach_hidden`, `reset_hidden_where`) goes through `tree_map` instead of branching on
the cell type. `hidden=None` means the zero state, for every cell.

    model = RNNLM(vocab_size=len(vocab), spec=ModelSpec(cell="lstm", num_layers=2))
    logits, hidden = model(x)                          # (B, T, V)
    logits, hidden = model(x_next, detach_hidden(hidden))  # next window of the same streams
"""

from __future__ import annotations

import re
from typing import Callable, Union

import torch
from torch import nn

from rnnlab import recurrence
from rnnlab.schema import CELL_NAMES, ModelSpec
from rnnlab.vocab import EOS_ID

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
assert tuple(CELLS) == CELL_NAMES, "schema.py names the same cells"

Hidden = Union[torch.Tensor, tuple[torch.Tensor, ...], None]


class RNNLM(nn.Module):
    def __init__(self, vocab_size: int, spec: ModelSpec = ModelSpec()) -> None:
        super().__init__()
        self.vocab_size, self.spec = vocab_size, spec
        self.embedding = nn.Embedding(vocab_size, spec.embedding_size)
        # The cell's own dropout acts between stacked layers only; with one layer it would just warn.
        between = spec.dropout if spec.num_layers > 1 else 0.0
        self.rnn = CELLS[spec.cell](spec.embedding_size, spec.hidden_size, spec.num_layers,
                                    batch_first=True, dropout=between)
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size, vocab_size)
        self._init_weights()
        if spec.tie_weights:
            # Share the input and output embedding (Press & Wolf 2017; Inan et al. 2017).
            self.head.weight = self.embedding.weight

    @torch.no_grad()
    def _init_weights(self) -> None:
        # Small uniform embedding and head, as in pytorch/examples word_language_model.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
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

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens)  # (B, T) -> (B, T, E)

    def forward_from_embeddings(self, emb: torch.Tensor, hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
        """The model after the embedding lookup, so callers can take gradients w.r.t. the inputs."""
        if recurrence.supports(self.rnn, emb):  # CPU training: the hand-written BPTT, same maths
            out, hidden = recurrence.run(self.rnn, emb, hidden)
        else:
            out, hidden = self.rnn(emb, hidden)  # (B, T, H); hidden (L, B, H) or a tuple of those
        return self.head(self.drop(out)), hidden  # (B, T, V)

    def forward(self, tokens: torch.Tensor, hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
        if self.spec.reset_at_eos:
            return self._forward_with_resets(tokens, hidden)
        return self.forward_from_embeddings(self.embed(tokens), hidden)

    def _forward_with_resets(self, tokens: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        """Restart a stream from the zero state wherever its input is <eos> (the start token of a line).

        The window is cut at every step where some row sees <eos>; between cuts the cell runs as usual.
        """
        starts = tokens == EOS_ID  # (B, T)
        cuts = [0] + [t for t in starts.any(0).nonzero().flatten().tolist() if t > 0] + [tokens.size(1)]
        pieces = []
        for a, b in zip(cuts, cuts[1:]):
            hidden = reset_hidden_where(hidden, starts[:, a])
            logits, hidden = self.forward_from_embeddings(self.embed(tokens[:, a:b]), hidden)
            pieces.append(logits)
        return torch.cat(pieces, dim=1), hidden  # (B, T, V)


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
