"""The documentation covers every public name and builds without a single warning."""

import ast
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import numpyro_coupling

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"
PUBLIC = [n for n in numpyro_coupling.__all__ if not n.startswith("__")]


def _api_blocks() -> dict[str, set[str] | None]:
    """``::: identifier`` blocks of the API pages -> their ``members:`` list (None = all)."""
    blocks = {}
    for page in sorted(API.glob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^:::\s*(\S+)\s*$", line)
            if not m:
                continue
            options = []
            for nxt in lines[i + 1 :]:
                if nxt.strip() and not nxt.startswith(" "):
                    break
                options.append(nxt)
            listed = re.search(r"members:\s*\[([^\]]*)\]", "\n".join(options))
            members = None
            if listed:
                members = {s.strip().strip("'\"") for s in listed.group(1).split(",")}
            blocks[m.group(1)] = members
    return blocks


def _submodules() -> list[str]:
    return [
        f"numpyro_coupling.{m.name}"
        for m in pkgutil.iter_modules(numpyro_coupling.__path__)
        if not m.name.startswith("_")
    ]


def _defining_module(name: str) -> str:
    obj = getattr(numpyro_coupling, name)
    module = getattr(obj, "__module__", None)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return module
    for mod_name in _submodules():
        mod = importlib.import_module(mod_name)
        if name in getattr(mod, "__all__", ()) and getattr(mod, name, None) is obj:
            return mod_name
    raise AssertionError(f"{name} is not in the __all__ of any numpyro_coupling module")


def _has_doc_comment(module: str, name: str) -> bool:
    """A constant is documented by ``#:`` lines above it or a string literal below it."""
    source = inspect.getsource(importlib.import_module(module))
    tree, lines = ast.parse(source), source.splitlines()
    for i, node in enumerate(tree.body):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if not any(isinstance(t, ast.Name) and t.id == name for t in targets):
            continue
        above = lines[node.lineno - 2].lstrip() if node.lineno > 1 else ""
        below = tree.body[i + 1] if i + 1 < len(tree.body) else None
        string_below = (
            isinstance(below, ast.Expr)
            and isinstance(below.value, ast.Constant)
            and isinstance(below.value.value, str)
        )
        return above.startswith("#:") or string_below
    return False


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_docstring(name):
    obj = getattr(numpyro_coupling, name)
    if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
        # a class's own __doc__ (not inherited), a function's docstring
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert doc and doc.strip(), f"{name} has no docstring"
    else:
        module = _defining_module(name)
        assert _has_doc_comment(module, name), (
            f"constant {name} in {module} needs a `#:` comment above it (or a docstring below)"
        )


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_in_api_reference(name):
    blocks = _api_blocks()
    module = _defining_module(name)
    if f"numpyro_coupling.{name}" in blocks or f"{module}.{name}" in blocks:
        return
    assert module in blocks, f"{name} ({module}) is in no `::: ...` block under docs/api/"
    members = blocks[module]
    assert members is None or name in members, f"`::: {module}` lists members without {name}"


def test_every_public_module_has_an_api_page():
    blocks = _api_blocks()
    for mod_name in _submodules():
        mod = importlib.import_module(mod_name)
        if getattr(mod, "__all__", None):
            assert mod_name in blocks, f"add `::: {mod_name}` to a page under docs/api/"


def test_python_snippets_in_docs_parse():
    for page in sorted(DOCS.rglob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL):
            try:
                ast.parse(block)
            except SyntaxError as err:
                raise AssertionError(f"{page.relative_to(ROOT)}: {err}\n{block}") from err


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "WARNING" not in log, log[-6000:]
    # every top-level public name is rendered with an anchor on some API page
    html = "".join(p.read_text() for p in (tmp_path / "site" / "api").rglob("index.html"))
    missing = [n for n in PUBLIC if f'id="{_defining_module(n)}.{n}"' not in html]
    assert not missing, f"not rendered in the API reference: {missing}"
    # The pages render offline: every script (the maths renderer included) is bundled.
    site = tmp_path / "site"
    pages = "".join(p.read_text() for p in site.rglob("*.html"))
    external = set(re.findall(r"<script[^>]*\ssrc=\"((?:https?:)?//[^\"]*)\"", pages))
    assert not external, f"scripts loaded from the network: {sorted(external)}"
    assert 'src="javascripts/katex.js"' in (site / "index.html").read_text()
    for bundled in ("katex.min.js", "contrib/auto-render.min.js", "katex.min.css", "LICENSE"):
        assert (site / "vendor" / "katex" / bundled).is_file(), bundled
    # Every font the stylesheet names first (woff2, which browsers take) is shipped.
    css = (site / "vendor" / "katex" / "katex.min.css").read_text()
    fonts = set(re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))
    assert fonts and all((site / "vendor" / "katex" / f).is_file() for f in fonts)
