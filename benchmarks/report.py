"""Writing a benchmark's markdown table to ``benchmarks/results/``."""

from __future__ import annotations

from pathlib import Path


def write_markdown(lines, out_dir, name: str) -> Path:
    """Write ``lines`` (joined by newlines) to ``out_dir/name.md``, print and return the path.

    Smoke runs pass a ``name`` ending in ``_quick`` so they never overwrite a full run.
    """
    text = "\n".join(lines) + "\n"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    path.write_text(text)
    print(text)
    return path
