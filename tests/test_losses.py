"""The AUC-F1 training loss and hard validation with the model in the loop (SPEC §5)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import twinbench_jax as tb

N, G, D, N_NULL = 12, 6, 12, 8


def _linear(params, inputs):
  # HIGHEST: exact comparisons below, and accelerators default to TF32.
  return jnp.matmul(inputs, params["w"], precision="highest") + params["b"]


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  refs = (rng.normal(size=(N, G)) + 3.0 * rng.normal(size=G)).astype(np.float32)
  inputs = rng.normal(size=(N, D)).astype(np.float32)
  params = {"w": (0.5 * rng.normal(size=(D, G))).astype(np.float32),
            "b": refs.mean(axis=0)}
  rows = np.arange(N)
  return refs, inputs, params, tb.QueryBatch(inputs, rows)


def _own(x, refs, rows):
  # own score with one truth per row: the exact squared distance to it (the similarity
  # matrix's matmul identity rounds differently, which can flip a near-tie)
  return -jnp.sum((x - refs[rows]) ** 2, axis=-1)


@functools.partial(jax.jit, static_argnames=("stop_null",))
def _manual(params, batch, key, refs, temperature=0.1, stop_null=False):
  """The loss written out from the public array API."""
  randomize = tb.resolve_randomizer("shuffle_features")
  rel = jnp.eye(N, dtype=bool)[batch.rows]
  x = _linear(params, batch.inputs)
  s = tb.similarity(x, refs)
  own = _own(x, refs, batch.rows)
  keys = jax.random.split(key, N_NULL)
  null_x = jax.vmap(lambda k: _linear(params, randomize(k, batch.inputs)))(keys)
  null = jax.vmap(lambda xb: _own(xb, refs, batch.rows))(null_x)
  if stop_null:
    null = jax.lax.stop_gradient(null)
  # the loss's default units are the global ones (docs/soft_relaxation.md)
  return 1.0 - tb.soft_auc_f1(s, rel, own, null, temperature=temperature, relative="global")


# One loss for the tests below, so its value-and-grad compiles once for the file.
REFS, INPUTS, PARAMS, BATCH = _problem(0)
LOSS = tb.soft_auc_f1_loss(_linear, REFS, n_null=N_NULL)
LOSS_VG = jax.jit(jax.value_and_grad(LOSS))
MANUAL_VG = jax.jit(jax.value_and_grad(_manual), static_argnames=("stop_null",))


def test_loss_is_one_minus_soft_auc_f1_of_the_model_null_with_gradients_through_both():
  key = jax.random.key(3)
  for temperature in (0.1, 0.03):  # traced: overriding the default does not recompile
    value, grads = LOSS_VG(PARAMS, BATCH, key, temperature)
    expected, expected_grads = MANUAL_VG(PARAMS, BATCH, key, REFS, temperature)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for name in ("w", "b"):
      np.testing.assert_allclose(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6)
  # the randomised-input predictions carry part of the gradient
  _, real_only = MANUAL_VG(PARAMS, BATCH, key, REFS, 0.03, stop_null=True)
  assert not np.allclose(grads["w"], real_only["w"], rtol=1e-3)


def test_gradients_are_nonzero_near_a_collapsed_model():
  near = {"w": 1e-3 * PARAMS["w"], "b": PARAMS["b"]}
  value, grads = LOSS_VG(near, BATCH, jax.random.key(2), 0.1)
  assert float(value) > 0.5
  assert float(jnp.linalg.norm(grads["w"])) > 1e-3


def test_hard_validation_equals_the_exact_metric_with_the_same_null():
  refs, _, params, batch = REFS, INPUTS, PARAMS, BATCH
  n_null, chunk = 20, 8  # 20 replicates in chunks of 8: the last chunk is padded
  validate = tb.hard_auc_f1_validation(_linear, refs, n_null=n_null, null_chunk=chunk)
  key = jax.random.key(5)
  rel = np.eye(N, dtype=bool)
  x = _linear(params, batch.inputs)
  s = tb.similarity(x, refs)
  own = _own(x, refs, batch.rows)
  randomize = tb.resolve_randomizer("shuffle_features")
  # replicate b: the inputs randomised with fold_in(key, b), as in `tb.model_null`
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(n_null))
  null = jax.jit(jax.vmap(lambda k: _own(_linear(params, randomize(k, batch.inputs)), refs,
                                         batch.rows)))(keys)
  expected = tb.auc_f1(tb.empirical_pvalues(own, null), tb.truth_ranks(s, rel) <= 1).auc
  np.testing.assert_allclose(validate(params, batch, key), expected, rtol=1e-6)
  assert float(validate(params, batch, key)) == float(validate(params, batch, key))


def test_a_model_that_ignores_the_randomised_input_ties_exactly_and_scores_zero():
  batch = tb.QueryBatch({"x": INPUTS, "unused": INPUTS[:, ::-1]}, np.arange(N))

  def model(p, inp):
    return _linear(p, inp["x"])

  validate = tb.hard_auc_f1_validation(model, REFS, n_null=10, leaves=["unused"])
  assert float(validate(PARAMS, batch, jax.random.key(0))) == 0.0  # every p-value is 1
  value, grads = jax.jit(jax.value_and_grad(
      tb.soft_auc_f1_loss(model, REFS, n_null=N_NULL, leaves=["unused"])))(
          PARAMS, batch, jax.random.key(1))
  assert float(value) > 0.95  # soft AUC-F1 of a tie-only null is ≈ 0
  assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_several_relevant_candidates_and_other_randomisers():
  refs, inputs, params, _ = _problem(6)
  # 6 perturbations, each observed twice among the 12 references
  rel = np.zeros((6, N), bool)
  rel[np.arange(6), np.arange(6)] = rel[np.arange(6), np.arange(6) + 6] = True
  batch = tb.QueryBatch(inputs[:6], np.arange(6))
  key = jax.random.key(7)

  def flip(key, x):  # a user randomiser
    return jnp.where(jax.random.uniform(key, x.shape) < 0.5, -x, x)

  loss = tb.soft_auc_f1_loss(_linear, refs, rel, n_null=4, randomize=flip, metric="cosine")

  @jax.jit
  def expected(params):
    x = jnp.concatenate([_linear(params, batch.inputs)[None],
                         jax.vmap(lambda k: _linear(params, flip(k, batch.inputs)))(
                             jax.random.split(key, 4))])
    s = jax.vmap(lambda xb: tb.similarity(xb, refs, metric="cosine"))(x)
    own = jax.vmap(lambda sb: tb.own_scores(sb, rel))(s)
    return 1.0 - tb.soft_auc_f1(s[0], rel, own[0], own[1:], relative="global")

  value, grads = jax.jit(jax.value_and_grad(loss))(params, batch, key)
  np.testing.assert_allclose(value, expected(params), rtol=1e-5)
  assert np.isfinite(grads["w"]).all()


def test_errors_name_the_argument():
  refs, inputs, params, batch = _problem()
  with pytest.raises(TypeError, match="`predict_fn` must be callable"):
    tb.soft_auc_f1_loss("model", refs)
  with pytest.raises(ValueError, match="`relevance` must have one column per reference"):
    tb.soft_auc_f1_loss(_linear, refs, np.eye(N, N + 1, dtype=bool))
  with pytest.raises(ValueError, match="no relevant candidate"):
    tb.soft_auc_f1_loss(_linear, refs, np.zeros((N, N), bool))
  with pytest.raises(ValueError, match="`n_null`"):
    tb.soft_auc_f1_loss(_linear, refs, n_null=0)
  with pytest.raises(ValueError, match="unknown `metric`"):
    tb.hard_auc_f1_validation(_linear, refs, metric="manhattan")
  with pytest.raises(ValueError, match="`null_chunk`"):
    tb.hard_auc_f1_validation(_linear, refs, null_chunk=0)
  with pytest.raises(ValueError, match="unknown randomiser"):
    tb.soft_auc_f1_loss(_linear, refs, randomize="shuffle")
  loss = tb.soft_auc_f1_loss(_linear, refs, n_null=2)
  with pytest.raises(TypeError, match="`batch` must be a `QueryBatch"):
    loss(params, inputs, jax.random.key(0))
  with pytest.raises(ValueError, match="`batch.rows` must be a 1-D integer array"):
    loss(params, (inputs, np.arange(N, dtype=np.float32)), jax.random.key(0))
  with pytest.raises(ValueError, match="`batch.rows` must index the 12 rows"):
    loss(params, (inputs, np.arange(N) + 1), jax.random.key(0))
  with pytest.raises(ValueError, match="`predict_fn` must return one prediction per query"):
    loss(params, (inputs, np.arange(N - 1)), jax.random.key(0))


# --- training (SPEC §5: the auxiliary loss raises the hard AUC-F1 and undoes collapse) -----


def _init(task, *, collapsed, seed=0):
  return tb.datasets.toy_mlp_init(jax.random.key(seed + 1), task.train_inputs.shape[1], 64,
                         task.train_profiles.shape[1],
                         output_bias=task.train_profiles.mean(axis=0),
                         output_scale=1e-3 if collapsed else 1.0)


def _trainer(task, *, lam, steps=200, batch_size=128, seed=0):
  """A jitted `run(params)`: Adam on `mse + lam * (1 - soft AUC-F1)` in one `lax.scan`."""
  n_train = task.train_profiles.shape[0]
  aux = tb.soft_auc_f1_loss(tb.datasets.toy_mlp_predict, task.train_profiles, n_null=16)
  opt = optax.adam(1e-2)

  def total(p, batch, key):
    mse = jnp.mean((tb.datasets.toy_mlp_predict(p, batch.inputs) - task.train_profiles[batch.rows]) ** 2)
    return mse + lam * aux(p, batch, key) if lam else mse

  @jax.jit
  def run(params):
    def step(carry, key):
      p, state = carry
      k_rows, k_null = jax.random.split(key)
      rows = jax.random.permutation(k_rows, n_train)[:batch_size]
      grads = jax.grad(total)(p, tb.QueryBatch(task.train_inputs[rows], rows), k_null)
      updates, state = opt.update(grads, state)
      return (optax.apply_updates(p, updates), state), None

    keys = jax.random.split(jax.random.key(seed + 2), steps)
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), keys)
    return params

  return run


@pytest.mark.slow
def test_auxiliary_loss_beats_mse_alone_and_escapes_collapse():
  task = tb.datasets.make_toy_task(jax.random.key(0))
  n_test = task.test_inputs.shape[0]
  held_out = tb.QueryBatch(task.test_inputs, np.arange(n_test))
  validate = tb.hard_auc_f1_validation(tb.datasets.toy_mlp_predict, task.test_profiles, n_null=100)
  key = jax.random.key(123)

  def report(params):
    s = tb.similarity(tb.datasets.toy_mlp_predict(params, task.test_inputs), task.test_profiles)
    return float(validate(params, held_out, key)), float(tb.gini(tb.top1_counts(s)))

  fresh, collapsed_init = _init(task, collapsed=False), _init(task, collapsed=True)
  mse_only = _trainer(task, lam=0.0)(fresh)
  with_aux = _trainer(task, lam=1.0)
  escaped = with_aux(collapsed_init)
  with_aux = with_aux(fresh)
  auc_mse, _ = report(mse_only)
  auc_aux, _ = report(with_aux)
  auc_start, gini_start = report(collapsed_init)
  auc_escaped, gini_escaped = report(escaped)
  # held-out hard AUC-F1: the auxiliary loss wins clearly
  assert auc_aux > auc_mse + 0.1, (auc_aux, auc_mse)
  # started collapsed (every query ranks the same few candidates first) and got out
  assert auc_start < 0.05 and gini_start > 0.9, (auc_start, gini_start)
  assert auc_escaped > 0.3 and gini_escaped < gini_start - 0.2, (auc_escaped, gini_escaped)
