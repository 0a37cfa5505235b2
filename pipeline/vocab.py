"""Stage `vocab`: build the vocabulary from the training split and encode every split."""

from rnnlab import corpus, vocab
from rnnlab.config import load_params, section
from rnnlab.errors import entry_point


def run(params) -> None:
    texts = {name: corpus.read_split(params.paths.prepared, name) for name in corpus.SPLITS}
    spec = section(params, vocab.VocabSpec, "vocab")
    stats = vocab.build_and_encode(texts, spec, params.corpus.format == "lines", params.paths.vocab)
    oov = ", ".join(f"{k} {v:.2%}" for k, v in stats["oov_rate"].items())
    print(f"{stats['level']} vocabulary: {stats['size']:,} tokens; OOV rate {oov}")



@entry_point
def main() -> None:
    run(load_params())


if __name__ == "__main__":
    main()
