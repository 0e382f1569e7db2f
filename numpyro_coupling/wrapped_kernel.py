"""A NumPyro MCMC kernel that wraps another and passes its NumPyro surface through."""

from __future__ import annotations

from numpyro.infer.mcmc import MCMCKernel

__all__ = ["WrappedKernel"]


class WrappedKernel(MCMCKernel):
    """Base of the kernels that run another kernel, ``inner``, and add to its transitions.

    The model, the sample field, the default fields, the post-processing and the potential
    are ``inner``'s; a subclass writes ``init``, ``sample`` and ``get_diagnostics_str``.

    Args:
        inner: the wrapped NumPyro kernel.

    Example:
        >>> from numpyro.infer import NUTS
        >>> class Same(WrappedKernel):
        ...     def init(self, *args, **kwargs):
        ...         return self.inner.init(*args, **kwargs)
        ...     def sample(self, state, model_args, model_kwargs):
        ...         return self.inner.sample(state, model_args, model_kwargs)
        >>> Same(NUTS(lambda: None)).sample_field
        'z'
    """

    def __init__(self, inner):
        if not isinstance(inner, MCMCKernel):
            raise TypeError(f"inner must be a NumPyro MCMC kernel, got {inner!r}")
        self.inner = inner

    @property
    def model(self):
        return self.inner.model

    @property
    def sample_field(self):
        return self.inner.sample_field

    @property
    def default_fields(self):
        return self.inner.default_fields

    @property
    def is_ensemble_kernel(self):
        return self.inner.is_ensemble_kernel

    @property
    def _sample_fn(self):
        # NumPyro's MCMC initialises a kernel again unless its ``_sample_fn`` is set; a
        # second ``init`` of vectorised chains would batch NUTS's step twice.
        return getattr(self.inner, "_sample_fn", None)

    def postprocess_fn(self, model_args, model_kwargs):
        return self.inner.postprocess_fn(model_args, model_kwargs)

    def get_potential_fn(self, model_args=(), model_kwargs=None):
        return self.inner.get_potential_fn(model_args, model_kwargs)
