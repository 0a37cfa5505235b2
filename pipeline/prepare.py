"""Stage `prepare`: read the corpus, clean it, split it into data/prepared/{train,val,test}.txt."""

from rnnlab import corpus
from rnnlab.config import load_params, section
from rnnlab.errors import entry_point


@entry_point
def main() -> None:
    params = load_params()
    stats = corpus.prepare(section(params, corpus.CorpusSpec, "corpus"), params.paths.prepared, params.paths.raw)
    sizes = ", ".join(f"{k} {v:,}" for k, v in stats["chars"].items())
    print(f"prepared {stats['source']} corpus ({stats['format']}): {sizes} characters")


if __name__ == "__main__":
    main()
