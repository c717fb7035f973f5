"""Type aliases shared by the array core, the soft relaxation and the training helpers.

A leaf module (imports nothing from the package), so every layer can use it.
The tuples `METRICS` and `TIES` are the runtime values of the `Metric` and
`Ties` literals: the accepted option strings, in the order the docs list them.
"""

from __future__ import annotations

import typing
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

import jax
import numpy as np

# Anything `jnp.asarray` takes: a JAX or NumPy array, a nested list, a scalar.
ArrayLike = Union[jax.Array, np.ndarray, Sequence[Any], float, int, bool]

# The similarity metrics of SPEC §1 (larger = closer for every one).
Metric = Literal["sqeuclidean", "euclidean", "l1", "cosine", "pearson"]
METRICS: tuple[str, ...] = typing.get_args(Metric)

# How tied scores share a rank (SPEC §2).
Ties = Literal["average", "optimistic", "pessimistic"]
TIES: tuple[str, ...] = typing.get_args(Ties)

# What a relative temperature is a fraction of (`tb.soft_auc_f1`): True = "local".
Relative = Union[bool, Literal["local", "global"]]

# A cutoff `k` (a number >= 1; traced values are accepted where documented).
K = Union[int, float, jax.Array]

# A temperature: a positive scalar for every smooth step, or one per step as a
# `SoftTemperatures`, a `(rank, hit, p, alpha)` sequence or a mapping by step name.
Temperature = Union[float, jax.Array, Sequence[Any], Mapping[str, Any]]

# `reduce_fn` of a per-query function: `[Q] -> scalar`, or None to keep `[Q]` (rax).
ReduceFn = Optional[Callable[..., jax.Array]]

# A model as the loss factories take it: `predict_fn(params, inputs) -> [b, G] predictions`.
PredictFn = Callable[[Any, Any], jax.Array]

# A model as the model null takes it: `inputs -> [b, G] predictions`.
InputsFn = Callable[[Any], jax.Array]
