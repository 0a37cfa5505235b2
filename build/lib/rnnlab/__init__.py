"""rnnlab: a reproducible experiment pipeline for recurrent language models."""

__version__ = "0.1.0"
