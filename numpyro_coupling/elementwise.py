"""One elementwise layer: a transformer applied to every coordinate with its own parameters.

It is what a zero-kernel coupling does to its active coordinates, with every coordinate
active and no conditioner: RBIG's marginal Gaussianisation (with a mixture-CDF
transformer) and a guide's layers for a one-dimensional latent, where no coupling split
exists.
"""

from __future__ import annotations

import jax.numpy as jnp

from .bijection import Bijection
from .checks import as_shape
from .transformers import Transformer, make_transformer

__all__ = ["Elementwise"]


class Elementwise(Bijection):
    """Every coordinate through ``transformer`` with its own learnt (unconditioned) parameters.

    With :class:`~numpyro_coupling.MixtureGaussianCDF` each coordinate goes through
    ``Phi^-1(F_i(x_i))``, ``F_i`` a Gaussian-mixture CDF: the marginal Gaussianisation
    layer of RBIG.

    Args:
        shape: event shape (an int ``d`` means ``(d,)``).
        transformer: a :class:`~numpyro_coupling.Transformer` or a name of
            :data:`~numpyro_coupling.transformers.TRANSFORMERS`.
        params: raw parameters ``(*shape, transformer.n_params)`` (trainable); default
            ``transformer.constant_params`` for every coordinate.
        dtype: dtype of the default parameters.

    Attributes:
        params: ``(*shape, n_params)`` raw parameters.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from numpyro_coupling import MixtureGaussianCDF
        >>> mix = MixtureGaussianCDF(2)
        >>> params = mix.pack(jnp.array([[0.5, 0.5]] * 3), jnp.array([[-1.0, 1.0]] * 3),
        ...                   jnp.ones((3, 2)))
        >>> layer = Elementwise((3,), mix, params)
        >>> z, log_det = jax.jit(layer.transform_and_log_det)(jnp.zeros(3))  # at the median
        >>> bool((z == 0).all()), log_det.shape
        (True, ())
        >>> Elementwise(1, "spline").transform(jnp.array([[0.5]])).tolist()  # starts at identity
        [[0.5]]
    """

    _params = ("params",)
    _static = ("shape", "transformer")

    def __init__(self, shape, transformer: Transformer | str, params=None, dtype=None):
        self.shape = as_shape(shape)
        self.transformer = make_transformer(transformer)
        n_params = self.transformer.n_params
        if params is None:
            dtype = dtype or jnp.zeros(()).dtype
            params = jnp.tile(self.transformer.constant_params(dtype), (*self.shape, 1))
        params = jnp.asarray(params)
        if params.shape != (*self.shape, n_params):
            raise ValueError(
                f"params must have shape {(*self.shape, n_params)} (event shape + n_params), "
                f"got {params.shape}"
            )
        self.params = params

    def _apply(self, x, fn):
        self.check_event(x)
        params = jnp.broadcast_to(self.params, jnp.shape(x) + self.params.shape[-1:])
        y, log_det = fn(x, params)
        return y, log_det.sum(tuple(range(-len(self.shape), 0))) if self.shape else log_det

    def transform_and_log_det(self, x):
        return self._apply(x, self.transformer.forward)

    def inverse_and_log_det(self, y):
        return self._apply(y, self.transformer.inverse)
