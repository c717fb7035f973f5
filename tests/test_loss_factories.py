"""optax-style loss API: the `make_*` factory, the plain array loss, factories inside `jit`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb

N, G, D, N_NULL = 10, 5, 7, 6


def _linear(params, inputs):
  return jnp.matmul(inputs, params["w"], precision="highest") + params["b"]


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  refs = (rng.normal(size=(N, G)) + 2.0 * rng.normal(size=G)).astype(np.float32)
  inputs = rng.normal(size=(N, D)).astype(np.float32)
  params = {"w": (0.5 * rng.normal(size=(D, G))).astype(np.float32), "b": refs.mean(axis=0)}
  return refs, inputs, params, tb.QueryBatch(inputs, np.arange(N))


def test_the_old_name_is_the_factory():
  assert tb.soft_auc_f1_loss is tb.make_soft_auc_f1_loss


def test_factory_is_the_array_loss_of_the_models_predictions():
  refs, inputs, params, batch = _problem(0)
  key = jax.random.key(1)
  loss = tb.make_soft_auc_f1_loss(_linear, refs, n_null=N_NULL, metric="cosine")
  shuffled = jax.vmap(tb.resolve_randomizer("shuffle_features"), in_axes=(0, None))(
      jax.random.split(key, N_NULL), inputs)
  x = jax.vmap(lambda i: _linear(params, i))(jnp.concatenate([inputs[None], shuffled]))
  value, grad_x = jax.value_and_grad(tb.auc_f1_loss, argnums=(0, 1))(
      x[0], x[1:], refs, metric="cosine")
  np.testing.assert_allclose(loss(params, batch, key), value, rtol=1e-5)
  # gradients reach both the real and the randomised-input predictions
  assert np.any(grad_x[0] != 0) and np.any(grad_x[1] != 0)
  with pytest.raises(ValueError, match=r"`predictions` must have shape \(b, G\)"):
    tb.auc_f1_loss(x[0, :3], x[1:], refs)
  with pytest.raises(ValueError, match=r"`null_predictions` must have shape \(B, b, G\)"):
    tb.auc_f1_loss(x[0], x[1:, :3], refs)


def test_factories_are_built_and_called_inside_jit():
  refs, inputs, params, batch = _problem(2)
  rel = np.zeros((N // 2, N), bool)  # perturbation r observed twice: references r and r + 5
  rel[np.arange(N // 2), np.arange(N // 2)] = rel[np.arange(N // 2), np.arange(N // 2) + 5] = 1
  half = tb.QueryBatch(inputs[: N // 2], np.arange(N // 2))
  key = jax.random.key(3)

  def build_and_call(refs, rel, params):
    loss = tb.make_soft_auc_f1_loss(_linear, refs, n_null=N_NULL)
    validate = tb.hard_auc_f1_validation(_linear, refs, n_null=9, null_chunk=4)
    several = tb.make_soft_auc_f1_loss(_linear, refs, rel, n_null=N_NULL)
    return (jax.value_and_grad(loss)(params, batch, key), validate(params, batch, key),
            several(params, half, key))

  (value, grads), auc, value_rel = jax.jit(build_and_call)(refs, rel, params)
  (value_e, grads_e), auc_e, value_rel_e = build_and_call(refs, rel, params)
  np.testing.assert_allclose(value, value_e, rtol=1e-5)
  np.testing.assert_allclose(value_rel, value_rel_e, rtol=1e-5)  # traced relevance: general path
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
                         grads, grads_e)
  assert float(auc) == float(auc_e)
  # a traced relevance with a query that has no relevant candidate: NaN, not a number
  empty = rel.copy()
  empty[1] = False
  _, _, poisoned = jax.jit(build_and_call)(refs, empty, params)
  assert np.isnan(poisoned)


def test_validation_equals_the_model_null_of_the_batch():
  refs, inputs, params, batch = _problem(4)
  key = jax.random.key(5)
  validate = tb.hard_auc_f1_validation(_linear, refs, n_null=15, null_chunk=4, k=2)
  expected = tb.model_null(functools.partial(_linear, params), inputs, refs, key=key,
                           n_null=15, progress=False).auc_f1(k=2).auc
  assert float(validate(params, batch, key)) == float(expected)
