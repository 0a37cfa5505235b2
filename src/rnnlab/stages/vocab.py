"""Stage `vocab`: build the vocabulary from the training split and encode every split (`paths.vocab`)."""

from __future__ import annotations

from rnnlab import corpus
from rnnlab.files import remove_leftovers
from rnnlab.vocab import build_and_encode

# Outputs DVC does not cache (dvc.yaml `cache: false`): only git brings them back after a failed run
UNCACHED = ("{paths.vocab}/stats.json",)


def run(params) -> dict:
    remove_leftovers(params.paths.vocab)
    texts = {name: corpus.SplitBlocks(params.paths.prepared, name) for name in corpus.SPLITS}
    for name in ("val", "test"):  # a damaged split is one line before any output is written (train: counted first)
        texts[name].check()
    stats = build_and_encode(texts, params.vocab, params.corpus.format == "lines", params.paths.vocab)
    oov = ", ".join(f"{k} {v:.2%}" for k, v in stats["oov_rate"].items() if stats["splits"][k]["tokens"])
    print(f"{stats['level']} vocabulary: {stats['size']:,} tokens" + (f"; OOV rate {oov}" if oov else ""))
    return stats
