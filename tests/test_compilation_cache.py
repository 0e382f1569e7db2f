"""The persistent compilation cache: a second process loads what the first compiled."""

import subprocess
import sys
import textwrap

import pytest

from numpyro_coupling import default_cache_dir, enable_compilation_cache

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from jax import monitoring
    from numpyro_coupling import enable_compilation_cache

    hits = []
    monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
    )
    jax.jit(jnp.cos)(1.0)  # a compilation before the cache is on: the call still counts
    enable_compilation_cache(sys.argv[1], min_compile_seconds=0)
    value = jax.jit(lambda x: jnp.sin(x) * jnp.exp(x) + 3.0)(0.5)
    print(len(hits), float(value))
    """
)


def _run(cache):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cache)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    hits, value = out.stdout.split()
    return int(hits), float(value)


def test_a_second_process_loads_the_compiled_program(tmp_path):
    cache = tmp_path / "xla"
    hits, first = _run(cache)
    assert hits == 0
    assert any(cache.iterdir()), "nothing was stored"
    hits, second = _run(cache)
    assert hits >= 1
    assert second == first


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMPYRO_COUPLING_CACHE_DIR", str(tmp_path / "named"))
    assert default_cache_dir() == tmp_path / "named"
    monkeypatch.delenv("NUMPYRO_COUPLING_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "numpyro_coupling" / "xla"


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="min_compile_seconds"):
        enable_compilation_cache(tmp_path, min_compile_seconds=-1)
    with pytest.raises(ValueError, match="max_bytes"):
        enable_compilation_cache(tmp_path, max_bytes=0)
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(NotADirectoryError, match="path"):
        enable_compilation_cache(file)


def test_the_demo_runs_uncached_where_the_cache_cannot_be_made(monkeypatch, tmp_path):
    import argparse

    from numpyro_coupling.demo import add_budget_arguments, use_compilation_cache

    parser = argparse.ArgumentParser()
    add_budget_arguments(parser, svi_steps=10, num_warmup=10, num_samples=10)
    assert use_compilation_cache(parser.parse_args(["--no-cache"])) is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NUMPYRO_COUPLING_CACHE_DIR", str(blocker / "xla"))  # under a file
    with pytest.warns(UserWarning, match="not kept"):
        assert use_compilation_cache(parser.parse_args([])) is None
