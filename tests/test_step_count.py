"""StepCount: one MCMC run that samples and counts its warm-up's gradients."""

import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from numpyro_coupling import GlobalMoves
from numpyro_coupling.step_count import StepCount


def model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))


@pytest.mark.parametrize("moves", [False, True])
def test_one_run_counts_the_warmup_of_two(moves):
    # The same chains as a warm-up run followed by a sampling run, and the warm-up's
    # gradients recovered from the running total.
    def kernel():
        nuts = NUTS(model)
        return GlobalMoves(nuts, rate=0.3) if moves else nuts

    kw = {"num_warmup": 60, "num_samples": 20, "num_chains": 2, "progress_bar": False}
    kw["chain_method"] = "vectorized"
    split = MCMC(kernel(), **kw)
    split.warmup(jr.key(0), collect_warmup=True, extra_fields=("num_steps",))
    warmup_steps = int(np.sum(split.get_extra_fields()["num_steps"]))
    split.run(split.post_warmup_state.rng_key, extra_fields=("num_steps",))

    one = MCMC(StepCount(kernel()), **kw)
    one.run(jr.key(0), extra_fields=("num_steps",))
    np.testing.assert_array_equal(one.get_samples()["x"], split.get_samples()["x"])
    sampled = int(np.sum(one.get_extra_fields()["num_steps"]))
    assert int(np.sum(one.last_state.total_steps)) - sampled == warmup_steps
    assert one.last_state.total_steps.shape == (2,)


def test_inner_is_checked():
    with pytest.raises(TypeError, match="inner"):
        StepCount(model)
