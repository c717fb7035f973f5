"""Flax NNX modules as the model: the loss, the validation, the metric update, `tb.model_null`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb

nnx = pytest.importorskip("flax.nnx")

Q, D, G, N_NULL = 10, 6, 5, 6


class Net(nnx.Module):
  """Linear -> BatchNorm -> tanh -> Dropout -> Linear; train mode when built."""

  def __init__(self, rngs):
    self.l1 = nnx.Linear(D, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.drop = nnx.Dropout(0.3, rngs=rngs)
    self.l2 = nnx.Linear(16, G, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.drop(jnp.tanh(self.bn(self.l1(x)))))


class IgnoresEmbedding(nnx.Module):
  """Reads `inputs["embedding"]` but does not depend on it; Dropout in train mode."""

  def __init__(self, rngs):
    self.net = Net(rngs)

  def __call__(self, inputs):
    return self.net(inputs["x"]) + 0.0 * inputs["embedding"][:, :1]


def _data(seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (Q, D)), jax.random.normal(ky, (Q, G))


def _numpy(leaf):
  if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return np.asarray(leaf)


def _state(module):
  return jax.tree_util.tree_map(_numpy, nnx.to_pure_dict(nnx.state(module)))


def _assert_tree_equal(a, b):
  # integers (RNG counts, keys) exactly, statistics up to jit-vs-eager rounding
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-8),
                         a, b)


def test_loss_of_a_module_with_dropout_and_batchnorm_matches_plain_calls_and_updates_state():
  x, refs = _data(0)
  net = Net(nnx.Rngs(0))
  before = nnx.clone(net)
  loss = tb.make_soft_auc_f1_loss(net, refs, n_null=N_NULL)
  key = jax.random.key(1)

  @nnx.jit
  def step(model, batch, key):
    return nnx.value_and_grad(loss)(model, batch, key)

  value, grads = step(net, tb.QueryBatch(x, np.arange(Q)), key)
  # Independently: the real pass and each replicate are plain train-mode calls of fresh
  # copies of the module (so every call draws the same Dropout masks), then the array loss.
  real_model = nnx.clone(before)
  real = real_model(x)
  shuffled = jax.vmap(tb.resolve_randomizer("shuffle_features"), in_axes=(0, None))(
      jax.random.split(key, N_NULL), x)
  null = jnp.stack([nnx.clone(before)(xs) for xs in shuffled])
  np.testing.assert_allclose(value, tb.auc_f1_loss(real, null, refs), rtol=1e-5)
  # the state after the loss is the state after the real-input call: running averages
  # moved (from the real batch only) and the Dropout stream advanced once
  _assert_tree_equal(_state(net), _state(real_model))
  assert not np.allclose(net.bn.mean[...], before.bn.mean[...])
  flat = jax.tree_util.tree_leaves(nnx.to_pure_dict(grads))
  assert all(np.all(np.isfinite(g)) for g in flat)
  assert float(jnp.linalg.norm(grads["l2"]["kernel"][...])) > 1e-4


def test_functional_pattern_with_jax_grad_returns_the_new_state():
  x, refs = _data(2)
  net = Net(nnx.Rngs(3))
  loss = tb.make_soft_auc_f1_loss(net, refs, n_null=N_NULL)
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  batch, key = tb.QueryBatch(x, np.arange(Q)), jax.random.key(4)

  def loss_fn(params, rest):
    model = nnx.merge(graphdef, params, rest, copy=True)  # variables of this trace
    return loss(model, batch, key), nnx.state(model, nnx.Not(nnx.Param))

  (value, new_rest), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, rest)
  expected = nnx.clone(net)
  expected_value = loss(expected, batch, key)  # eager, on the module
  np.testing.assert_allclose(value, expected_value, rtol=1e-5)
  _assert_tree_equal(jax.tree_util.tree_map(_numpy, nnx.to_pure_dict(new_rest)),
                     jax.tree_util.tree_map(_numpy, nnx.to_pure_dict(
                         nnx.state(expected, nnx.Not(nnx.Param)))))
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_model_null_evaluates_an_eval_copy_and_never_changes_the_module():
  x, refs = _data(5)
  net = Net(nnx.Rngs(6))
  net(x)  # move the running averages away from their initial values
  before = _state(net)
  kw = dict(key=jax.random.key(7), n_null=N_NULL, progress=False)
  res = tb.model_null(net, x, refs, **kw)
  eval_copy = nnx.clone(net)
  eval_copy.eval()
  plain = tb.model_null(lambda v: eval_copy(v), x, refs, **kw)  # noqa: PLW0108
  np.testing.assert_allclose(res.own_scores, plain.own_scores, rtol=1e-5)
  np.testing.assert_array_equal(res.pvalues, plain.pvalues)
  as_is = tb.model_null(net, x, refs, module_mode="as_is", **kw)  # train mode: runs
  assert np.all(np.isfinite(as_is.null_own_scores))
  assert not np.allclose(as_is.own_scores, res.own_scores)  # Dropout and batch statistics
  _assert_tree_equal(_state(net), before)
  with pytest.raises(ValueError, match="unknown `module_mode`"):
    tb.model_null(net, x, refs, module_mode="train", **kw)


def test_dropout_in_train_mode_still_ties_exactly_when_the_input_is_ignored():
  x, refs = _data(8)
  model = IgnoresEmbedding(nnx.Rngs(9))
  inputs = {"x": x, "embedding": jax.random.normal(jax.random.key(10), (Q, 4))}
  res = tb.model_null(model, inputs, refs, key=jax.random.key(11), n_null=N_NULL,
                      leaves=["embedding"], module_mode="as_is", progress=False)
  np.testing.assert_array_equal(res.pvalues, 1.0)  # same masks for real and null inputs
  validate = tb.hard_auc_f1_validation(model, refs, n_null=N_NULL, leaves=["embedding"],
                                       module_mode="as_is")
  assert float(validate(model, tb.QueryBatch(inputs, np.arange(Q)), jax.random.key(0))) == 0.0


def test_validation_and_metric_update_of_a_module_equal_model_null():
  x, refs = _data(12)
  net = Net(nnx.Rngs(13))
  key = jax.random.key(14)
  one_shot = tb.model_null(net, x, refs, key=key, n_null=N_NULL, progress=False).auc_f1()
  validate = tb.hard_auc_f1_validation(net, refs, n_null=N_NULL, null_chunk=4)
  assert float(validate(net, tb.QueryBatch(x, np.arange(Q)), key)) == float(one_shot.auc)
  update = nnx.jit(tb.make_auc_f1_metric_update(net, refs, n_null=N_NULL, null_chunk=4))
  state = tb.AucF1Metric.empty(Q, N_NULL)
  for rows in (np.arange(4, Q), np.arange(4)):
    state = update(state, net, tb.QueryBatch(x[rows], rows), key)
  assert float(state.compute().auc) == float(one_shot.auc)


def test_a_factory_built_from_a_module_needs_the_module():
  x, refs = _data(15)
  net = Net(nnx.Rngs(16))
  loss = tb.make_soft_auc_f1_loss(net, refs, n_null=2)
  with pytest.raises(TypeError, match="pass the module itself"):
    loss(nnx.state(net), tb.QueryBatch(x, np.arange(Q)), jax.random.key(0))
