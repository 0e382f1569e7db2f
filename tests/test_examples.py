"""Every script in ``examples/`` runs end to end with its ``--quick`` (tiny) arguments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_quick(script, tmp_path):
    # XLA_FLAGS (conftest: no backend optimisations) passes on with the environment; the
    # NeuTra examples keep their compiled programs in the test's folder, not the user's.
    env = {**os.environ, "MPLBACKEND": "Agg", "NUMPYRO_COUPLING_CACHE_DIR": str(tmp_path / "xla")}
    out = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert list(tmp_path.glob("*.png")), f"{script.name} wrote no figure"
    if "use_compilation_cache(args)" in script.read_text():
        assert any((tmp_path / "xla").iterdir()), f"{script.name} kept no compiled program"
