"""Stage `prepare`: read the corpus, clean it, split it into `paths.prepared`/{train,val,test}.txt."""

from __future__ import annotations

from rnnlab import corpus
from rnnlab.files import remove_leftovers

# Outputs DVC does not cache (dvc.yaml `cache: false`): only git brings them back after a failed run
UNCACHED = ("{paths.prepared}/stats.json",)


def run(params) -> dict:
    remove_leftovers(params.paths.prepared)
    stats = corpus.prepare(params.corpus, params.paths.prepared, params.paths.raw)
    sizes = ", ".join(f"{k} {v:,}" for k, v in stats["chars"].items())
    print(f"prepared {stats['source']} corpus ({stats['format']}): {sizes} characters")
    return stats
