"""Griffe extension: read the package's docstring conventions the way they are meant.

* A Google-style ``Example:`` section is read as ``Examples:``. Griffe would render the
  singular title as an admonition of plain text, turning every ``>>>`` line into a
  quote; retitled, the doctests render as highlighted code.
* Sphinx roles (``:class:`~numpyro_coupling.Chain```, ``:func:`fit_rbig```, ...) become
  cross-references to the API pages (plain code when the target is not documented), so
  the role markup never shows in the rendered text.
* A module constant documented by ``#:`` comment lines right above it gets those lines
  as its docstring, so it is listed in the API reference like everything else.
"""

from __future__ import annotations

import html
import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", flags=re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|obj|exc|const):`(~?)([^`<>]+)`")


def doc_comment(lines: list[str], lineno: int) -> str | None:
    """The ``#:`` comment block directly above 1-based line ``lineno``, or ``None``."""
    block, i = [], lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        block.insert(0, lines[i].lstrip()[2:].strip())
        i -= 1
    return "\n".join(block) or None


def _canonical(obj, ident: str) -> str | None:
    """The canonical dotted path ``ident`` names from inside ``obj``, or ``None``."""
    collection = obj.modules_collection
    candidates = [ident]
    head, _, rest = ident.partition(".")
    try:
        base = obj.resolve(head)
        candidates.append(f"{base}.{rest}" if rest else base)
    except Exception:  # a name not in scope: try it as a full path only
        pass
    for path in candidates:
        try:
            return collection[path].canonical_path
        except Exception:
            continue
    return None


def _link_roles(obj, text: str) -> str:
    def replace(match):
        tilde, ident = match.groups()
        ident = ident.strip().lstrip(".")
        shown = ident.rsplit(".", 1)[-1] if tilde else ident
        target = _canonical(obj, ident)
        if target is None:
            return f"`{shown}`"
        return (
            f'<autoref identifier="{html.escape(target)}" optional>'
            f"<code>{html.escape(shown)}</code></autoref>"
        )

    return _ROLE.sub(replace, text)


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class ExampleSections(griffe.Extension):
    """Retitle ``Example:`` sections, link Sphinx roles, adopt ``#:`` comments."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if attr.docstring is not None or attr.lineno is None or attr.filepath is None:
            return
        try:
            lines = attr.lines_collection[attr.filepath]
        except KeyError:
            return
        comment = doc_comment(lines, attr.lineno)
        if comment is not None:
            attr.docstring = griffe.Docstring(comment, lineno=attr.lineno - 1, parent=attr)

    def on_package(self, *, pkg, **kwargs) -> None:
        # after the whole package is loaded, so that every role target can be resolved
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
                obj.docstring.value = _link_roles(obj, text)
