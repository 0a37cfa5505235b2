"""The documentation: a short README that links every page under docs/, and no broken relative link.

Quick tier: reads Markdown files only (pathlib and re, nothing else imported).
"""
import re
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 200

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with an optional "title"; the text may hold one level of [..]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, …


def _prose_lines(text):
    """The lines outside fenced code blocks (with their 1-based numbers)."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: lowercase, punctuation dropped (not hyphens), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor a Markdown file has, duplicates numbered as GitHub does (x, x-1, x-2, …)."""
    seen = {}
    result = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path):
    """(line number, target) of every Markdown link and image in a file, code excluded."""
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, m.group(1)


def broken_links(path):
    """The relative links of a Markdown file that point at nothing: a missing file, or a missing heading."""
    path = Path(path)
    broken = []
    for number, target in links(path):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path}:{number}: ({target})"
        if not dest.exists():
            broken.append(f"{where} {dest} does not exist")
        elif anchor and dest.is_file() and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            broken.append(f"{where} {dest.name} has no heading with anchor #{anchor}")
    return broken


def markdown_files():
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_relative_link_and_image_resolves():
    files = markdown_files()
    assert len(files) > 1, "no pages under docs/"
    broken = [problem for path in files for problem in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / unquote(target.partition("#")[0])).resolve()
              for _, target in links(README) if target and not EXTERNAL.match(target)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "no pages under docs/"
    missing = [page.relative_to(REPO).as_posix() for page in pages if page.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_every_docs_page_has_a_title_and_a_way_back():
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert text.startswith("# "), f"{page} does not start with a '# Title'"
        back = [t for _, t in links(page) if t.partition("#")[0] and
                (page.parent / unquote(t.partition("#")[0])).resolve() == README.resolve()]
        assert back, f"{page} does not link back to the README"


def test_the_link_checker_reports_planted_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading, with punctuation!\n")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine anchor](other.md#a-code-heading-with-punctuation) ![fine](pic.png)\n"
        "[own heading](#page) [web](https://example.org/nothing) [mail](mailto:a@b.c)\n"
        "`[in code](nowhere.md)`\n"
        "```\n[in a code block](nowhere.md)\n```\n"
        "[bad file](missing.md)\n"
        "![bad image](missing.png)\n"
        "[bad anchor](other.md#no-such-heading)\n"
        "[bad own anchor](#nope)\n")
    broken = broken_links(page)
    assert len(broken) == 4, broken
    for target in ("(missing.md)", "(missing.png)", "(other.md#no-such-heading)", "(#nope)"):
        assert sum(target in problem for problem in broken) == 1, (target, broken)


# --- the source: docs/pipeline.md lists every module; modules stay small and import without circles ----------

SRC = REPO / "src" / "rnnlab"
MAX_MODULE_LINES = 400


def modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py")


def test_the_layout_in_docs_pipeline_lists_every_module():
    layout = (DOCS / "pipeline.md").read_text(encoding="utf-8").split("## Layout", 1)[1]
    listed = set(re.findall(r"\b([a-z_]+)\.py\b", layout))
    missing = [p.relative_to(SRC).as_posix() for p in modules() if p.stem not in listed and p.parent == SRC]
    assert not missing, f"docs/pipeline.md's layout lacks: {missing}"


def test_no_module_is_over_the_line_limit():
    long = {p.relative_to(SRC).as_posix(): n for p in modules()
            if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def imports_of(path: Path) -> set[str]:
    """The rnnlab modules `path` imports, at the top or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnnlab"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n for n in names if (SRC.parent / (n.replace(".", "/") + ".py")).exists()} or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rnnlab")}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of `graph` (module -> modules it imports), each once, as a path."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_modules_import_without_circles():
    graph = {}
    for path in modules():
        name = "rnnlab." + path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
        graph[name] = {m for m in imports_of(path) if m != name and m != "rnnlab"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]  # the checker finds one
    assert not cycles(graph), cycles(graph)
