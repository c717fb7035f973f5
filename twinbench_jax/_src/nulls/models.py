"""Flax NNX modules as models: run functionally inside vmapped null replicates.

A module mutates its state as it runs (Dropout advances its RNG count, a
BatchNorm in train mode updates its running statistics), and an NNX variable
may only be mutated in the JAX trace it was created in, so a module called
inside `jax.vmap` over null replicates fails with ``TraceContextError``. Here
the module is split into a static graph and its state (`nnx.split`); each call
rebuilds a fresh module from the state inside the current trace, runs it, and
hands back the predictions and the state it left behind. The caller decides
which state to keep.

Flax is imported only when a module is passed: the array core does not
depend on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

MODULE_MODES = ("eval", "as_is")


def is_nnx_module(obj: Any) -> bool:
  """Whether `obj` is a Flax NNX module (without importing flax for anything else)."""
  if not any(c.__module__.startswith("flax") for c in type(obj).__mro__):
    return False
  from flax import nnx
  return isinstance(obj, nnx.Module)


def check_module_mode(module_mode: str) -> None:
  if module_mode not in MODULE_MODES:
    raise ValueError(f"unknown `module_mode` {module_mode!r}; choose one of {MODULE_MODES}")


def split(module: Any, module_mode: str = "as_is") -> tuple[Any, Any]:
  """`(graphdef, state)` of `module`; ``"eval"``: of an eval-mode copy (the module is unchanged).

  Eval mode is NNX's `Module.eval()`: Dropout off, BatchNorm normalising with
  its running averages. The copy shares the arrays, not the module objects.
  """
  from flax import nnx
  check_module_mode(module_mode)
  graphdef, state = nnx.split(module)
  if module_mode == "eval":
    copy = nnx.merge(graphdef, state)
    copy.eval()
    graphdef, state = nnx.split(copy)
  return graphdef, state


def _fresh(state: Any) -> Any:
  # Rebuilding the pytree creates new variables in the current trace, where they may mutate.
  return jax.tree_util.tree_map(lambda leaf: leaf, state)


def call(graphdef: Any, state: Any, inputs: Any) -> tuple[jax.Array, Any]:
  """Runs the module `(graphdef, state)` on `inputs` -> `(predictions, state after the call)`.

  The returned state holds every variable except the parameters (RNG counts,
  batch statistics, ...): what a training step writes back with `nnx.update`.
  """
  from flax import nnx
  module = nnx.merge(graphdef, _fresh(state))
  out = module(inputs)
  return out, nnx.state(module, nnx.Not(nnx.Param))


@dataclasses.dataclass(frozen=True)
class ModuleApply:
  """Hashable `apply(state, inputs) -> predictions` of one module graph (state updates dropped)."""

  graphdef: Any

  def __call__(self, state, inputs):
    return call(self.graphdef, state, inputs)[0]
