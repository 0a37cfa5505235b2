"""Every config choice, declared once: the values a key may take, and where a choice names code, what it names.

rnnlab.schema checks values against these; the modules that act on a choice look it up here
(`rnnlab.model`: CELLS, `rnnlab.lit`: OPTIMIZERS, `rnnlab.vocab`: TOKENIZERS), so no list is mirrored.
"""

SOURCES = ("shakespeare", "file", "url", "agreement")
FORMATS = ("text", "lines")
ENCODINGS = ("utf-8", "bytes")
SPLIT_NAMES = ("train", "val", "test")
NORMALIZATIONS = ("NFC", "NFKC", "NFD", "NFKD", "none")
LEVELS = ("char", "word")
# vocab.tokenizer -> the regular expression that finds its tokens (rnnlab.vocab compiles them)
TOKENIZERS = {
    "words": r"\w+(?:['’]\w+)*|[^\w\s]",  # words (with inner apostrophes) and punctuation
    "whitespace": r"\S+",  # pre-tokenised corpora such as PTB
}
CELLS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}  # model.cell -> its torch.nn module
IMPLS = ("auto", "torch", "rnnlab")  # model.impl: who runs BPTT in training (rnnlab.model.RNNLM.core)
HEADS = ("full", "adaptive")
INITS = ("rnnlab", "uniform", "torch")
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}  # optim.algorithm -> its torch.optim class
SCHEDULES = ("none", "plateau", "step")
UNK_POLICIES = ("allow", "reject")
CLIP_ALGORITHMS = ("norm", "value")
FILLERS = ("random", "passage")
# trainer.*: what Lightning accepts (its _PRECISION_INPUT, accelerator and strategy names) that runs here
PRECISIONS = ("32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true",
              "64", 64)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
