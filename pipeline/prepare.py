"""Stage `prepare`: read the corpus, clean it, split it into data/prepared/{train,val,test}.txt."""

from rnnlab import corpus
from rnnlab.config import load_params, section
from rnnlab.errors import entry_point


def run(params) -> None:
    stats = corpus.prepare(section(params, corpus.CorpusSpec, "corpus"), params.paths.prepared, params.paths.raw)
    sizes = ", ".join(f"{k} {v:,}" for k, v in stats["chars"].items())
    print(f"prepared {stats['source']} corpus ({stats['format']}): {sizes} characters")



@entry_point
def main() -> None:
    run(load_params())


if __name__ == "__main__":
    main()
