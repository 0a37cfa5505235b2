"""Text kept in a temporary file instead of memory: the prepare stage's cleaned corpus (rnnlab.corpus).

A `Spool` is written piece by piece (`write`) and read back by character position (`Part`: characters
[start, end) of it), so a corpus of any size is split and copied into its train / val / test files in memory
bounded by a piece. It also notes what the corpus checks need without reading it again: whether the text is
blank and which characters occur. The file is anonymous (`tempfile.TemporaryFile`, under $TMPDIR): it goes
away when the spool is closed, and also when the process is killed. Its bytes are the text's UTF-8, which is
what the split files hold, so a part is written by copying bytes.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from typing import IO, Iterator, NamedTuple

import numpy as np

PIECE = 1 << 22  # characters per piece at most: finding a character position decodes one piece
COPY = 1 << 20  # bytes per read when a part is copied or compared
UNICODE = 0x110000  # code points


class Spool:
    """Text in an anonymous temporary file, appended to by `write`, read back by character position."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.chars, self.bytes, self.blank = 0, 0, True
        self.char_starts: list[int] = []  # where each piece starts, in characters
        self.byte_starts: list[int] = []  # ... and in bytes
        self.seen = np.zeros(UNICODE, dtype=bool)  # the characters that occur

    def close(self) -> None:
        self.file.close()

    def write(self, text: str) -> None:
        for i in range(0, len(text), PIECE):
            self.write_piece(text[i : i + PIECE])

    def write_piece(self, text: str) -> None:
        data = text.encode()
        self.file.seek(0, os.SEEK_END)
        self.file.write(data)
        self.char_starts.append(self.chars)
        self.byte_starts.append(self.bytes)
        self.chars, self.bytes = self.chars + len(text), self.bytes + len(data)
        self.blank = self.blank and text.isspace()  # as `not text.strip()` of the whole text
        self.seen[np.frombuffer(text.encode("utf-32-le"), dtype="<u4")] = True  # code points

    def distinct(self) -> set[int]:
        return set(np.flatnonzero(self.seen).tolist())

    def blocks(self, first: int, last: int) -> Iterator[bytes]:
        """Bytes [first, last) of the file, COPY bytes at a time."""
        self.file.flush()
        while first < last:
            self.file.seek(first)
            block = self.file.read(min(COPY, last - first))
            first += len(block)
            yield block

    def piece(self, k: int) -> str:
        end = self.byte_starts[k + 1] if k + 1 < len(self.byte_starts) else self.bytes
        return b"".join(self.blocks(self.byte_starts[k], end)).decode()

    def byte_at(self, i: int) -> int:
        """The byte offset of character i (0 <= i <= chars)."""
        if i >= self.chars:
            return self.bytes
        k = bisect.bisect_right(self.char_starts, i) - 1
        skip = i - self.char_starts[k]
        return self.byte_starts[k] + (len(self.piece(k)[:skip].encode()) if skip else 0)

    def line_end(self, i: int) -> int:
        """The position after the first line break at or after character i (`chars` if there is none)."""
        k = max(bisect.bisect_right(self.char_starts, i) - 1, 0)
        for k in range(k, len(self.char_starts)):
            start = self.char_starts[k]
            j = self.piece(k).find("\n", max(i - start, 0))
            if j >= 0:
                return start + j + 1
        return self.chars

    def same(self, other: "Spool") -> bool:
        """Whether both hold the same text."""
        if self.bytes != other.bytes:
            return False
        return all(a == b for a, b in zip(self.blocks(0, self.bytes), other.blocks(0, other.bytes)))


class Part(NamedTuple):
    """Characters [start, end) of a spool: one split of the corpus."""

    spool: Spool
    start: int
    end: int

    @classmethod
    def whole(cls, spool: Spool) -> "Part":
        return cls(spool, 0, spool.chars)

    @property
    def chars(self) -> int:
        return self.end - self.start

    def blocks(self) -> Iterator[bytes]:
        return self.spool.blocks(self.spool.byte_at(self.start), self.spool.byte_at(self.end))

    def lines(self) -> int:
        return sum(block.count(b"\n") for block in self.blocks())

    def text(self) -> str:
        return b"".join(self.blocks()).decode()

    def copy_to(self, fh: IO[bytes]) -> None:
        for block in self.blocks():
            fh.write(block)
