import gc
import os

# A test spends most of its time compiling small programs that then run for a moment:
# skip XLA's backend (LLVM) optimisations, which change no result's meaning, only how
# fast the machine code runs (a third less time on the NeuTra tests). Set here, before
# JAX starts its backend; subprocesses the tests start inherit it.
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
)

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run a test once in float32 and once with x64 enabled in float64."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield jnp.float64
    else:
        yield jnp.float32


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


#: Memory mappings past which a test process drops JAX's compiled programs.
MAX_MAPPINGS = 30_000
_tests_run = [0]


def _mappings() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs when the process holds too many memory mappings.

    Each compiled CPU program keeps memory mappings alive (about a hundred per test here);
    a worker that runs several hundred tests otherwise reaches the kernel's per-process
    limit (``vm.max_map_count``, 65530 by default), where XLA's compiler fails to allocate
    and the worker crashes.
    """
    yield
    _tests_run[0] += 1
    if _tests_run[0] % 10 == 0 and _mappings() > MAX_MAPPINGS:
        jax.clear_caches()
        gc.collect()
