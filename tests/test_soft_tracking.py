"""The default soft AUC-F1 tracks the hard one on linear models of the simulator (issue 14).

A small version of ``benchmarks/bench_soft_tracking.py``: three least-squares
linear models of rising quality, hard AUC-F1 under the model null (B = 99) and
the label null, and the default soft value on the same arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinbench_jax as tb

N_PERT, WIDTH, N_FEATURES = 200, 40, (4, 16, 40)


def _predict(beta, x):
  return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1) @ beta


@functools.lru_cache(maxsize=None)
def _models():
  """Least-squares models on `d` informative input features (zero-padded to one width,
  so every model shares one compiled null)."""
  sim = tb.datasets.simulate_perturbations(jax.random.key(0), n_perturbations=N_PERT, n_genes=200,
                                  n_cells=20)
  y = sim.pseudobulk()
  kw, kn = jax.random.split(jax.random.key(1))
  w = jax.random.normal(kw, (y.shape[1], WIDTH)) / np.sqrt(y.shape[1])
  x_all = sim.effects @ w * 3 + jax.random.normal(kn, (N_PERT, WIDTH))
  out = []
  for d in N_FEATURES:
    x = jnp.where(jnp.arange(WIDTH) < d, x_all, 0.0)
    xa = jnp.concatenate([x, jnp.ones((N_PERT, 1))], axis=1)
    out.append((x, jnp.linalg.lstsq(xa, y)[0]))
  return y, out


@pytest.mark.parametrize("null", ["model", "label"])
def test_default_soft_auc_f1_is_within_0_05_of_the_hard_one(null):
  y, models = _models()
  hard, soft = [], []
  for x, beta in models:
    if null == "model":
      res = tb.model_null(functools.partial(_predict, beta), x, y, key=jax.random.key(1),
                          n_null=99, progress=False)
    else:
      res = tb.label_null(_predict(beta, x), y)
    hard.append(float(res.auc_f1().auc))
    soft.append(float(tb.soft_auc_f1(res.scores, res.relevance, res.own_scores,
                                     res.null_own_scores)))
  assert hard[0] < 0.1 < hard[-1]  # weak to good
  assert np.all(np.diff(hard) > 0)
  np.testing.assert_allclose(soft, hard, atol=0.05)
  assert np.all(np.diff(soft) > 0)  # same order


def test_gradient_wrt_the_weights_is_finite_and_improves_the_metric():
  y, models = _models()
  x, beta = models[0]  # the weak model: where training starts
  loss = tb.soft_auc_f1_loss(_predict, y, n_null=16, relative=True)  # tb.soft_auc_f1's units
  batch = tb.QueryBatch(x, jnp.arange(N_PERT))
  key = jax.random.key(2)
  value_and_grad = jax.jit(jax.value_and_grad(loss))
  value, g = value_and_grad(beta, batch, key)
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  # a small step against the gradient lowers the loss on the same null draw
  step = 1e-2 * float(jnp.abs(beta).mean()) / float(jnp.abs(g).mean())
  assert float(value_and_grad(beta - step * g, batch, key)[0]) < float(value)
