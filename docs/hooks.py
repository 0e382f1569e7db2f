"""MkDocs hook: render every script in ``examples/`` on the page holding ``<!-- examples -->``.

Each example gets a section built from its module docstring, the command that runs it,
its figures (the PNGs in ``docs/img/examples/<script name>/``, written by
``docs/make_figures.py``) and its full source. New scripts appear without editing the
page; a script without figures is reported as a warning, which fails a strict build.
"""

from __future__ import annotations

import ast
import html
import logging
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIGURES = ROOT / "docs" / "img" / "examples"
MARKER = "<!-- examples -->"

log = logging.getLogger("mkdocs.hooks.examples")


_ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|obj|exc):`(~?)([^`<>]+)`")


def _role_to_link(match) -> str:
    tilde, ident = match.groups()
    shown = ident.rsplit(".", 1)[-1] if tilde else ident
    # an optional cross-reference: a link where the API pages document it, code otherwise
    code = f"<code>{html.escape(shown)}</code>"
    return f'<autoref identifier="{html.escape(ident)}" optional>{code}</autoref>'


def _markdown_from_rst(text: str) -> str:
    """Docstring markup to Markdown: ``literal`` to `literal`, Sphinx roles to links."""
    return re.sub(r"``(.+?)``", r"`\1`", _ROLE.sub(_role_to_link, text))


def _caption(png: Path) -> str:
    name = png.stem.removeprefix(f"{png.parent.name}_") or png.stem
    return name.replace("_", " ").capitalize()


def render_example(script: Path, page_dir: Path) -> str:
    """The Markdown section of one example script."""
    source = script.read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    title, _, body = doc.partition("\n")
    lines = [f"## `{script.name}`", ""]
    if title:
        lines += [_markdown_from_rst(title.strip()), ""]
    if body.strip():
        lines += [_markdown_from_rst(body.strip()), ""]
    if f"examples/{script.name}" not in doc:
        lines += [
            "```bash",
            f"python examples/{script.name} --out figures      # --quick: a tiny run",
            "```",
            "",
        ]
    figures = sorted((FIGURES / script.stem).glob("*.png"))
    if not figures:
        log.warning(
            "examples/%s has no figures in docs/img/examples/%s/; run "
            "`python docs/make_figures.py %s`",
            script.name,
            script.stem,
            script.stem,
        )
    for png in figures:
        rel = png.relative_to(page_dir).as_posix()
        lines += [f"![{_caption(png)}]({rel})", ""]
    lines += [f'??? example "Source of `examples/{script.name}`"', "", "    ```python"]
    lines += [f"    {line}".rstrip() for line in source.rstrip().splitlines()]
    lines += ["    ```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown, page, config, files):
    """Replace the marker with one section per example script."""
    if MARKER not in markdown:
        return markdown
    page_dir = (Path(config["docs_dir"]) / page.file.src_path).resolve().parent
    scripts = sorted(EXAMPLES.glob("*.py"))
    sections = [render_example(s, page_dir) for s in scripts]
    return markdown.replace(MARKER, "\n".join(sections))
