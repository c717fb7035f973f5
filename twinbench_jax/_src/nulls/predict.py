"""`predict_fn` and the randomiser as hashable kernel arguments, and the observed predictions."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src.nulls import models
from twinbench_jax._src.nulls import randomize as randomize_lib


class _Dynamic:
  """Placeholder for an array argument of a `functools.partial` (passed as a traced argument)."""

  def __repr__(self):
    return "<dynamic>"


_DYNAMIC = _Dynamic()


@dataclasses.dataclass(frozen=True)
class _PlainCall:
  fn: Callable

  def __call__(self, params, inputs):
    del params
    return self.fn(inputs)


@dataclasses.dataclass(frozen=True)
class _PartialCall:
  func: Callable
  treedef: Any
  static_leaves: tuple

  def __call__(self, params, inputs):
    it = iter(params)
    leaves = [next(it) if leaf is _DYNAMIC else leaf for leaf in self.static_leaves]
    args, kwargs = jax.tree_util.tree_unflatten(self.treedef, leaves)
    return self.func(*args, inputs, **kwargs)


def split_predict(predict_fn: Callable, module_mode: str = "eval") -> tuple[Callable, Any]:
  """`predict_fn` -> (hashable `apply(params, inputs)`, array `params`).

  The arrays of a `functools.partial(apply, params)` and the state of a Flax
  NNX module become traced arguments of the kernels, so they are neither baked
  into the compiled code as constants nor a cause of recompilation when they
  change. Anything else is called as is (its closed-over arrays are constants).
  A module runs functionally (`models.call`) in `module_mode`; the state it
  leaves behind is dropped, so the caller's module is never changed.
  """
  if not callable(predict_fn):
    raise TypeError(f"`predict_fn` must be callable (inputs -> predictions), got "
                    f"{type(predict_fn).__name__}")
  models.check_module_mode(module_mode)
  if models.is_nnx_module(predict_fn):
    graphdef, state = models.split(predict_fn, module_mode)
    return models.ModuleApply(graphdef), state
  if isinstance(predict_fn, functools.partial):
    leaves, treedef = jax.tree_util.tree_flatten((predict_fn.args, predict_fn.keywords))
    is_array = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
    static = tuple(_DYNAMIC if a else leaf for leaf, a in zip(leaves, is_array))
    try:
      call = _PartialCall(predict_fn.func, treedef, static)
      hash(call)
    except TypeError:
      pass  # an unhashable non-array argument: call the partial as a whole
    else:
      return call, [leaf for leaf, a in zip(leaves, is_array) if a]
  return _PlainCall(predict_fn), ()


@dataclasses.dataclass(frozen=True)
class Randomizer:
  """A hashable randomiser spec, resolved at trace time by `tb.resolve_randomizer`."""

  spec: Any
  leaves: Optional[tuple]

  def __call__(self, key, inputs, row_ids=None):
    fn = randomize_lib.resolve_randomizer(self.spec, leaves=self.leaves)
    if row_ids is None or callable(self.spec):
      return fn(key, inputs)
    return fn(key, inputs, row_ids)



@functools.partial(jax.jit, static_argnames=("apply", "randomize", "batch"))
def predict_observed(params, inputs, key, *, apply, randomize, batch):
  """The observed predictions `apply(params, inputs)`, computed as a null batch is.

  The replicates run the model vmapped over `batch` randomised inputs, and an
  XLA matmul may round a batch of rows differently from a single row (seen on
  CPUs: every element of a small MLP's output moved by an ulp). So the observed
  predictions are row 0 of the same batched forward pass, on `batch` copies of
  the real inputs: a model that ignores its input then predicts the observed
  rows bit for bit and gets p = 1 (SPEC §3). The leaves the randomiser changes
  are batched copies there, the others stay unbatched, as in the model kernel;
  the barrier keeps XLA from folding the copies back into one row.
  """

  def one(i):
    randomized = randomize(jax.random.fold_in(key, i), inputs)
    real = i >= 0  # always true, but batched like the replicate index
    return apply(params, jax.lax.optimization_barrier(jax.tree.map(
        lambda o, r: o if r is o else jnp.where(real, o, r), inputs, randomized)))

  return jax.vmap(one)(jnp.arange(batch))[0]

