"""AUC-F1 as a training signal: a differentiable loss and a cheap hard validation (SPEC §5).

Both factories close over a model `predict_fn(params, inputs) -> [b, G]`, the
candidate profiles and the relevance, and return a function of
`(params, batch, key)`:

- `soft_auc_f1_loss` returns `1 - tb.soft_auc_f1` with a model-in-the-loop
  null: the null own scores come from the model's own predictions on `n_null`
  randomised copies of the batch's inputs, and gradients flow through both the
  real and the randomised-input predictions. A model earns a low loss only by
  ranking each query's truth first *and* by predicting something that depends
  on its input.
- `hard_auc_f1_validation` returns the exact AUC-F1 of SPEC §4 (the same null,
  hard ranks, hard p-values), jitted, for monitoring each epoch.

**The batch.** A `QueryBatch(inputs, rows)` (or any pair `(inputs, rows)`):
`inputs` is the pytree `predict_fn` takes, with a leading axis of `b` queries,
and `rows` is `[b]` int, the row of `relevance` (the perturbation) of each
input. The candidates are always all `C` references given to the factory, so
the metric of a batch ranks its `b` predictions against every candidate; the
p-values and the F1 curve are those of the batch's queries.

**Exact ties.** The real and the randomised-input predictions come out of one
vmapped call of `predict_fn`, so they share one compiled kernel and its
rounding: randomising an input the model ignores gives bitwise-equal
predictions, exact ties, p = 1 and an AUC-F1 of 0, as SPEC §3 requires.

**Cost per call.** `n_null + 1` forward passes of the model on `b` inputs, one
`[b, C]` similarity and the soft metric: `O(b·C + n_null·b)` memory on top of
the model's activations.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src import auc as auc_lib
from twinbench_jax._src import own_scores as own_lib
from twinbench_jax._src import pvalues as pvalues_lib
from twinbench_jax._src import randomize as randomize_lib
from twinbench_jax._src import ranking
from twinbench_jax._src import similarity as similarity_lib
from twinbench_jax._src import soft
from twinbench_jax._src import validation

PredictFn = Callable[[Any, Any], jax.Array]


class QueryBatch(NamedTuple):
  """A batch of queries for `soft_auc_f1_loss` and `hard_auc_f1_validation`.

  Attributes:
    inputs: the pytree `predict_fn(params, inputs)` takes; every leaf has a
      leading axis of `b` queries.
    rows: `[b]` int, the row of the factory's `relevance` (with the default
      identity relevance: the index of the reference) of each query.
  """

  inputs: Any
  rows: jax.Array


class _Setup(NamedTuple):
  predict_fn: PredictFn
  references: jax.Array
  relevance: jax.Array
  randomizer: Callable
  n_null: int
  metric: str
  truth: Optional[jax.Array]  # [N] index of the one relevant candidate per row, else None


def _setup(predict_fn, references, relevance, randomize, leaves, n_null, metric) -> _Setup:
  if not callable(predict_fn):
    raise TypeError(f"`predict_fn` must be callable (params, inputs) -> predictions, got "
                    f"{type(predict_fn).__name__}")
  refs = validation.as_float_array(references, "references", ndim=2)
  validation.check_no_nan(refs, "references")
  if relevance is None:
    rel = jnp.eye(refs.shape[0], dtype=bool)
  else:
    rel = validation.as_bool_array(relevance, "relevance", ndim=2)
    if rel.shape[1] != refs.shape[0]:
      raise ValueError(f"`relevance` must have one column per reference, got relevance "
                       f"{tuple(rel.shape)} and references {tuple(refs.shape)}")
  validation.check_every_query_has_relevant(rel)
  if metric not in similarity_lib.METRICS:
    raise ValueError(f"unknown `metric` {metric!r}; choose one of {similarity_lib.METRICS}")
  if int(n_null) != n_null or n_null < 1:
    raise ValueError(f"`n_null` must be a positive integer, got {n_null!r}")
  rel_np = np.asarray(rel)
  # One relevant candidate per row (pseudobulk): own scores by a gather of its index,
  # computed here once (under jit a reduction over a constant matrix is folded slowly).
  truth = np.argmax(rel_np, axis=1) if np.all(rel_np.sum(axis=1) == 1) else None
  return _Setup(predict_fn, refs, rel, randomize_lib.resolve_randomizer(randomize, leaves=leaves),
                int(n_null), metric, None if truth is None else jnp.asarray(truth, jnp.int32))


def _unpack(batch, n_rows: int):
  try:
    inputs, rows = batch
  except (TypeError, ValueError):
    raise TypeError("`batch` must be a `QueryBatch(inputs, rows)` or a pair (inputs, rows), got "
                    f"{type(batch).__name__}") from None
  rows = jnp.asarray(rows)
  if rows.ndim != 1 or not jnp.issubdtype(rows.dtype, jnp.integer):
    raise ValueError(f"`batch.rows` must be a 1-D integer array, got shape {tuple(rows.shape)} "
                     f"and dtype {rows.dtype}")
  if validation.is_concrete(rows) and rows.size and (int(rows.min()) < 0
                                                     or int(rows.max()) >= n_rows):
    raise ValueError(f"`batch.rows` must index the {n_rows} rows of `relevance`, got values in "
                     f"[{int(rows.min())}, {int(rows.max())}]")
  return inputs, rows


def _rows_out_of_range(rows, n_rows: int) -> jax.Array:
  """Scalar: a row index outside `[0, n_rows)` (the traced counterpart of `_unpack`'s check)."""
  return jnp.any((rows < 0) | (rows >= n_rows))


def _check_prediction_shape(setup: _Setup, params, inputs, b: int) -> None:
  # abstract evaluation: a wrong shape is reported before anything is computed
  shape = jax.eval_shape(setup.predict_fn, params, inputs).shape
  g = setup.references.shape[1]
  if tuple(shape) != (b, g):
    raise ValueError(f"`predict_fn` must return one prediction per query, shape (b, G) = "
                     f"({b}, {g}), got {tuple(shape)}")


def _safe_norm(x, axis=-1):
  ss = jnp.sum(x * x, axis=axis)
  return jnp.where(ss > 0, jnp.sqrt(jnp.where(ss > 0, ss, 1.0)), 0.0)


def _paired_similarity(x: jax.Array, y: jax.Array, metric: str) -> jax.Array:
  """Similarity of `x[i]` to `y[i]` (the diagonal of `tb.similarity`), with finite gradients."""
  if metric in ("sqeuclidean", "euclidean"):
    d = jnp.sum((x - y) ** 2, axis=-1)
    return -d if metric == "sqeuclidean" else -_safe_norm(x - y)
  if metric == "l1":
    return -jnp.sum(jnp.abs(x - y), axis=-1)
  if metric == "pearson":
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = y - jnp.mean(y, axis=-1, keepdims=True)
  nx, ny = _safe_norm(x), _safe_norm(y)
  return jnp.sum(x * y, axis=-1) / jnp.where(nx * ny > 0, nx * ny, 1.0)


def _own_scores(setup: _Setup, x: jax.Array, rows: jax.Array, rel_rows: jax.Array) -> jax.Array:
  """`[b]` own scores of predictions `x` (SPEC §1 default: mean similarity to the truth)."""
  if setup.truth is not None:
    return _paired_similarity(x, setup.references[setup.truth[rows]], setup.metric)
  s = similarity_lib.similarity(x, setup.references, metric=setup.metric)
  return own_lib.own_scores(s, rel_rows)


def _real_and_null_predictions(setup: _Setup, params, inputs, keys, b):
  """`[b, G]` predictions and `[len(keys), b, G]` predictions from randomised inputs.

  Both come out of one vmapped call, so they share the compiled kernel and its
  rounding: a model that ignores the randomised part of its input gives null
  predictions bitwise equal to the real ones, i.e. exact ties, so p = 1.
  """
  null_inputs = jax.vmap(setup.randomizer, in_axes=(0, None))(keys, inputs)
  stacked = jax.tree_util.tree_map(lambda r, n: jnp.concatenate([r[None], n]), inputs,
                                   null_inputs)
  x = jax.vmap(lambda i: setup.predict_fn(params, i))(stacked)
  return x[0], x[1:]


def _split_own_scores(setup: _Setup, x, null_x, rows, rel_rows):
  """Own scores of the real and null predictions, computed in one vmapped call (see above)."""
  both = jax.vmap(lambda xb: _own_scores(setup, xb, rows, rel_rows))(
      jnp.concatenate([x[None], null_x]))
  return both[0], both[1:]


def soft_auc_f1_loss(
    predict_fn: PredictFn,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    randomize: Any = "shuffle_features",
    leaves: Any = None,
    n_null: int = 16,
    metric: str = "sqeuclidean",
    k: float = 1,
    temperature: soft.Temperature = soft.DEFAULT_TEMPERATURE,
    relative: bool = True,
) -> Callable[..., jax.Array]:
  r"""Builds `loss(params, batch, key) = 1 - soft AUC-F1` with the model in the loop (SPEC §5).

  For the batch's `b` queries with predictions `x = predict_fn(params, inputs)`:
  similarities `s = tb.similarity(x, references)` `[b, C]`, own scores
  `m_q` (mean similarity to the query's relevant candidates), and null own
  scores `m_q^j` of `predict_fn(params, randomize(key_j, inputs))` for
  `j = 1..n_null`; then

  .. math:: \mathcal{L} = 1 - \mathrm{soft\_auc\_f1}(s, \mathrm{rel}, m, m^{1..B}).

  Gradients flow through both the real and the randomised-input predictions.
  The returned function is pure (jit it inside your training step), works
  with `jax.value_and_grad` and any optax optimiser, and composes with a main
  loss: ``mse(params, batch) + lam * loss(params, batch, key)``.

  Args:
    predict_fn: `(params, inputs) -> [b, G]` predictions, a JAX function
      (it is vmapped over the null replicates).
    references: `[C, G]` candidate profiles (e.g. the observed training
      pseudobulks).
    relevance: `[N, C]` boolean, row `r` marks the candidates of perturbation
      `r`; default: the identity (`N = C`, query row `r` ↔ reference `r`).
    randomize: ``"shuffle_features"`` (default), ``"permute_rows"`` (within the
      batch) or a callable `(key, inputs) -> inputs` (see
      `tb.resolve_randomizer`).
    leaves: names of the input leaves to randomise (built-in randomisers only).
    n_null: null replicates `B` per call; small values (8–32) are enough for a
      training signal, since each step draws fresh ones.
    metric: similarity metric of `tb.similarity`.
    k: a query is correct when its truth ranks within the top `k`.
    temperature: default temperatures, as in `tb.soft_auc_f1`.
    relative: temperatures relative to the score spreads (see `tb.soft_auc_f1`).

  Returns:
    ``loss(params, batch, key, temperature=None) -> scalar``: `batch` is a
    `QueryBatch(inputs, rows)`; `key` draws the null replicates; `temperature`
    (optional, may be traced) overrides the default, e.g. for annealing
    without recompiling.

  Example (see ``examples/train_auxiliary_loss.py`` for a full run)::

    aux = tb.soft_auc_f1_loss(predict, train_profiles, n_null=16)

    def total(params, batch, key, lam=1.0):
      mse = jnp.mean((predict(params, batch.inputs) - train_profiles[batch.rows]) ** 2)
      return mse + lam * aux(params, batch, key)

    value, grads = jax.value_and_grad(total)(params, tb.QueryBatch(inputs, rows), key)
  """
  setup = _setup(predict_fn, references, relevance, randomize, leaves, n_null, metric)
  soft._check_k(k)
  default_temps = soft.resolve_temperatures(temperature)

  def loss(params, batch, key, temperature=None):
    inputs, rows = _unpack(batch, setup.relevance.shape[0])
    b = rows.shape[0]
    temps = default_temps if temperature is None else soft.resolve_temperatures(temperature)
    _check_prediction_shape(setup, params, inputs, b)
    rel_rows = setup.relevance[rows]
    keys = jax.random.split(key, setup.n_null)
    x, null_x = _real_and_null_predictions(setup, params, inputs, keys, b)
    s = similarity_lib.similarity(x, setup.references, metric=setup.metric)
    m, mb = _split_own_scores(setup, x, null_x, rows, rel_rows)
    value = soft._soft_auc_f1(s, rel_rows, m, mb, temps, jnp.asarray(k, s.dtype),
                              relative=relative, alpha_grid=None,
                              alpha_chunk=soft.DEFAULT_ALPHA_CHUNK)
    # under jit: rows out of range or non-finite predictions give NaN, not a number
    value = validation.poison(value, _rows_out_of_range(rows, setup.relevance.shape[0])
                              | soft.invalid_inputs(s, rel_rows, m, mb))
    return 1.0 - value

  return loss


def hard_auc_f1_validation(
    predict_fn: PredictFn,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    randomize: Any = "shuffle_features",
    leaves: Any = None,
    n_null: int = 100,
    null_chunk: int = 25,
    metric: str = "sqeuclidean",
    k: int = 1,
) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """Builds a jitted `validate(params, batch, key) -> hard AUC-F1` (SPEC §3–4).

  The exact metric of `tb.auc_f1` for the batch's queries: hard truth ranks
  (``ties="average"``), empirical p-values against `n_null` model-in-the-loop
  replicates (`>=` counts as an exceedance), exact step area. Replicates are
  streamed `null_chunk` at a time (each chunk also re-predicts the real inputs,
  for exact ties) and only exceedance counts are kept, so memory is
  `O(b·C + null_chunk·b·G)`. The same `key` gives the same number.

  Args:
    predict_fn, references, relevance, randomize, leaves, metric, k: as in
      `soft_auc_f1_loss`.
    n_null: null replicates `B`; the AUC-F1 is at most `1 - 1/(B+1)`.
    null_chunk: replicates predicted at a time.

  Returns:
    A jitted ``validate(params, batch, key) -> scalar`` with `batch` a
    `QueryBatch(inputs, rows)`, e.g. the held-out perturbations.
  """
  setup = _setup(predict_fn, references, relevance, randomize, leaves, n_null, metric)
  if int(null_chunk) != null_chunk or null_chunk < 1:
    raise ValueError(f"`null_chunk` must be a positive integer, got {null_chunk!r}")
  if int(k) != k or k < 1:
    raise ValueError(f"`k` must be a positive integer, got {k!r}")
  chunk = min(int(null_chunk), setup.n_null)
  n_chunks = -(-setup.n_null // chunk)

  @jax.jit
  def validate(params, batch, key):
    inputs, rows = _unpack(batch, setup.relevance.shape[0])
    b = rows.shape[0]
    _check_prediction_shape(setup, params, inputs, b)
    rel_rows = setup.relevance[rows]
    x = setup.predict_fn(params, inputs)
    s = similarity_lib.similarity(x, setup.references, metric=setup.metric)
    ranks = ranking.truth_ranks(s, rel_rows)
    keys = jax.random.split(key, n_chunks * chunk).reshape(n_chunks, chunk)
    used = (jnp.arange(n_chunks * chunk) < setup.n_null).reshape(n_chunks, chunk)

    def add_chunk(counts, chunk_in):
      chunk_keys, chunk_used = chunk_in
      # each chunk re-predicts the real inputs beside its replicates (one extra
      # forward pass per chunk) so that ties are compared within one kernel
      x_chunk, null_x = _real_and_null_predictions(setup, params, inputs, chunk_keys, b)
      m, mb = _split_own_scores(setup, x_chunk, null_x, rows, rel_rows)
      # the hard `>=` of `tb.empirical_pvalues` (NaN as -inf); padded replicates never count
      exceed = (validation.nan_to_neg_inf(mb) >= validation.nan_to_neg_inf(m)[None])
      return counts + jnp.sum(exceed & chunk_used[:, None], axis=0, dtype=jnp.int32), None

    counts, _ = jax.lax.scan(add_chunk, jnp.zeros((b,), jnp.int32), (keys, used))
    p = pvalues_lib.pvalues_from_counts(counts, setup.n_null).astype(s.dtype)
    auc = auc_lib._auc_f1(p, ranks <= k, jnp.ones((b,), bool)).auc
    # rows out of range (clamped by the gather) or non-finite predictions: NaN, not a number
    return validation.poison(auc, _rows_out_of_range(rows, setup.relevance.shape[0])
                             | ~jnp.all(jnp.isfinite(x)))

  return validate
