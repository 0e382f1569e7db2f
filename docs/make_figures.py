"""Regenerate the figures of the examples page.

Runs each script of ``examples/`` (all, or the ones named) with small arguments, writing
its PNGs to ``docs/img/examples/<script name>/``, then shrinks them (at most
``MAX_WIDTH`` pixels wide, 256-colour palette) so they stay light in the repository.

    python docs/make_figures.py            # every example
    python docs/make_figures.py gallery    # one example
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIGURES = ROOT / "docs" / "img" / "examples"
MAX_WIDTH = 1000

#: Arguments per example; examples not listed run with ``--quick``.
ARGS = {
    "gallery": ["--steps", "1500"],
    "masks": ["--steps", "600"],
    "depth": ["--steps", "400", "--depths", "1", "2", "4", "--probe-depths", "2", "4", "8"],
    "flow_in_model": ["--steps", "1500"],
    "conditional_regression": ["--steps", "1500"],
    "rbig_warm_start": ["--steps", "1500"],
    **{
        name: [
            "--svi-steps",
            "2000",
            "--num-warmup",
            "300",
            "--num-samples",
            "300",
            "--no-progress",
        ]
        for name in ("funnel", "dual_moon", "eight_schools")
    },
}


def shrink(png: Path) -> None:
    """Cap the width and store the PNG with an adaptive 256-colour palette."""
    with Image.open(png) as im:
        im = im.convert("RGB")
        if im.width > MAX_WIDTH:
            im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def run(name: str) -> None:
    script = EXAMPLES / f"{name}.py"
    if not script.exists():
        raise SystemExit(f"no example {script}")
    final = FIGURES / name
    out = FIGURES / f".{name}.partial"  # the page keeps its old figures until this run ends
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rel_script, rel_out = script.relative_to(ROOT), out.relative_to(ROOT)  # run from ROOT
    cmd = [sys.executable, str(rel_script), *ARGS.get(name, ["--quick"]), "--out", str(rel_out)]
    print("$ python", *cmd[1:], flush=True)
    start = time.perf_counter()
    try:
        subprocess.run(cmd, check=True, env={**os.environ, "MPLBACKEND": "Agg"}, cwd=ROOT)
    except subprocess.CalledProcessError:
        shutil.rmtree(out, ignore_errors=True)
        raise
    for extra in out.iterdir():  # tables and logs are not shown on the page
        if extra.suffix != ".png":
            shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    for png in sorted(final.glob("*.png")):
        shrink(png)
        print(f"  {png.relative_to(ROOT)}  {png.stat().st_size / 1024:.0f} KiB")
    print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="example script names (default: all)")
    args = parser.parse_args(argv)
    failed = []
    for name in args.names or sorted(p.stem for p in EXAMPLES.glob("*.py")):
        try:
            run(name)
        except subprocess.CalledProcessError:
            failed.append(name)  # keep the old figures and go on with the next example
    if failed:
        raise SystemExit(f"failed (old figures kept): {', '.join(failed)}")


if __name__ == "__main__":
    main()
