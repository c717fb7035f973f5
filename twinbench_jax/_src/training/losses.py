"""AUC-F1 as a training signal: a differentiable loss and a cheap hard validation (SPEC §5).

The factories close over a model `predict_fn(params, inputs) -> [b, G]` (or a
Flax NNX module, then passed in place of `params`), the candidate profiles
and the relevance, and return a function of `(params, batch, key)`:

- `make_soft_auc_f1_loss` (also `soft_auc_f1_loss`) returns
  `1 - tb.soft_auc_f1` (`tb.auc_f1_loss` of the model's predictions) with a model-in-the-loop
  null: the null own scores come from the model's own predictions on `n_null`
  randomised copies of the batch's inputs, and gradients flow through both the
  real and the randomised-input predictions. A model earns a low loss only by
  ranking each query's truth first *and* by predicting something that depends
  on its input.
- `hard_auc_f1_validation` returns the exact AUC-F1 of SPEC §4 (the null of
  `tb.model_null`, hard ranks, hard p-values), jitted, for monitoring each
  epoch; `make_auc_f1_metric_update` accumulates the same metric over batches
  in a `tb.AucF1Metric`.

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

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src.training import metrics as metrics_lib
from twinbench_jax._src.nulls import models
from twinbench_jax._src.nulls import checks as null_checks
from twinbench_jax._src.nulls import predict as null_predict
from twinbench_jax._src.nulls import scoring as null_scoring
from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.nulls import randomize as randomize_lib
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.soft import area as soft_area
from twinbench_jax._src.soft import temperatures
from twinbench_jax._src import types
from twinbench_jax._src.core import checks
from twinbench_jax._src.core import validation

PredictFn = types.PredictFn


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
  predict_fn: PredictFn  # (params, inputs) -> predictions; None for a Flax NNX module
  references: jax.Array
  relevance: jax.Array
  randomizer: Callable
  n_null: int
  metric: str
  truth: Optional[jax.Array]  # [N] index of the one relevant candidate per row, else None


def _setup(predict_fn, references, relevance, randomize, leaves, n_null, metric) -> _Setup:
  if models.is_nnx_module(predict_fn):
    predict_fn = None  # the model is the module passed to each call
  elif not callable(predict_fn):
    raise TypeError(f"`predict_fn` must be callable (params, inputs) -> predictions or a Flax "
                    f"NNX module, got {type(predict_fn).__name__}")
  refs = validation.as_float_array(references, "references", ndim=2)
  validation.check_no_nan(refs, "references")  # skipped under jit: NaN scores poison the loss
  if relevance is None:
    rel = jnp.eye(refs.shape[0], dtype=bool)
  else:
    rel = validation.as_bool_array(relevance, "relevance", ndim=2)
    if rel.shape[1] != refs.shape[0]:
      raise ValueError(f"`relevance` must have one column per reference, got relevance "
                       f"{tuple(rel.shape)} and references {tuple(refs.shape)}")
  validation.check_every_query_has_relevant(rel)
  checks.check_metric(metric)
  n_null = checks.check_positive_int(n_null, "n_null")
  return _Setup(predict_fn, refs, rel, randomize_lib.resolve_randomizer(randomize, leaves=leaves),
                int(n_null), metric, _single_truth(relevance, rel))


def _single_truth(relevance, rel) -> Optional[jax.Array]:
  """`[N]` index of the one relevant candidate per row (pseudobulk), else None.

  Computed once at build time (under jit a reduction over a constant matrix is
  folded slowly); a relevance traced at build time (a factory built inside
  `jit`) takes the general path, the mean over the relevant candidates.
  """
  if relevance is None:
    return jnp.arange(rel.shape[0], dtype=jnp.int32)
  if not validation.is_concrete(rel):
    return None
  rel_np = np.asarray(rel)
  if not np.all(rel_np.sum(axis=1) == 1):
    return None
  return jnp.asarray(np.argmax(rel_np, axis=1), jnp.int32)


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


class _Model(NamedTuple):
  """The model of one call: `apply(params, inputs) -> predictions` with its array `params`."""

  apply: Callable  # hashable: the user's predict_fn, or `models.ModuleApply`
  params: Any  # the user's params, or the module's state
  graphdef: Any = None  # Flax NNX: the module's graph
  module: Any = None  # Flax NNX: the caller's module (state updates go back into it)


def _model(setup: _Setup, params, module_mode: str) -> _Model:
  if setup.predict_fn is not None:
    return _Model(setup.predict_fn, params)
  if not models.is_nnx_module(params):
    raise TypeError(f"this function was built from a Flax NNX module: pass the module itself "
                    f"(`model`) as its first argument, got {type(params).__name__}")
  graphdef, state = models.split(params, module_mode)
  return _Model(models.ModuleApply(graphdef), state, graphdef, params)


def _check_prediction_shape(setup: _Setup, model: _Model, inputs, b: int) -> None:
  # abstract evaluation: a wrong shape is reported before anything is computed
  shape = jax.eval_shape(model.apply, model.params, inputs).shape
  g = setup.references.shape[1]
  if tuple(shape) != (b, g):
    raise ValueError(f"`predict_fn` must return one prediction per query, shape (b, G) = "
                     f"({b}, {g}), got {tuple(shape)}")


def _own_scores(setup: _Setup, x: jax.Array, rows: jax.Array, rel_rows: jax.Array) -> jax.Array:
  """`[b]` own scores of predictions `x` (SPEC §1 default: mean similarity to the truth)."""
  if setup.truth is not None:
    truth = setup.references[setup.truth[rows]]
    return similarity_lib.get_metric(setup.metric).paired(x, truth)
  s = similarity_lib.similarity(x, setup.references, metric=setup.metric)
  return own_lib.own_scores(s, rel_rows)


def _real_and_null_predictions(setup: _Setup, model: _Model, inputs, keys):
  """`[b, G]` predictions, `[len(keys), b, G]` predictions from randomised inputs, new state.

  Both come out of one vmapped call, so they share the compiled kernel and its
  rounding: a model that ignores the randomised part of its input gives null
  predictions bitwise equal to the real ones, i.e. exact ties, so p = 1.

  A Flax NNX module runs functionally with its state unbatched: every replicate
  sees the module's RNG streams as they stand, so Dropout draws the same masks
  for the real and the randomised inputs (they differ only in the input), and
  a BatchNorm in train mode normalises each replicate by its own batch. The
  state returned (RNG counts, running statistics; None for a plain function)
  is that of the real-input pass: the null replicates never train the model.
  """
  null_inputs = jax.vmap(setup.randomizer, in_axes=(0, None))(keys, inputs)
  stacked = jax.tree_util.tree_map(lambda r, n: jnp.concatenate([r[None], n]), inputs,
                                   null_inputs)
  if model.graphdef is None:
    x = jax.vmap(lambda i: model.apply(model.params, i))(stacked)  # params may hold non-arrays
    return x[0], x[1:], None
  x, state = jax.vmap(lambda st, i: models.call(model.graphdef, st, i), in_axes=(None, 0))(
      model.params, stacked)
  return x[0], x[1:], jax.tree_util.tree_map(lambda leaf: leaf[0], state)


def _split_own_scores(setup: _Setup, x, null_x, rows, rel_rows):
  """Own scores of the real and null predictions, computed in one vmapped call (see above)."""
  both = jax.vmap(lambda xb: _own_scores(setup, xb, rows, rel_rows))(
      jnp.concatenate([x[None], null_x]))
  return both[0], both[1:]


def make_soft_auc_f1_loss(
    predict_fn: PredictFn,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    randomize: Any = "shuffle_features",
    leaves: Any = None,
    n_null: int = 16,
    metric: types.Metric = "sqeuclidean",
    k: float = 1,
    temperature: temperatures.Temperature = temperatures.DEFAULT_TEMPERATURE,
    relative: Any = "global",
) -> Callable[..., jax.Array]:
  r"""Builds `loss(params, batch, key) = 1 - soft AUC-F1` with the model in the loop (SPEC §5).

  The closure form of `tb.auc_f1_loss` (named like optax's ``make_*``
  builders; `tb.soft_auc_f1_loss` is the same function under its old name).

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
    relative: ``"global"`` (default): temperatures in units of the spreads over
      all scores, whose gradients reach many candidates (the sharp local units
      of `tb.soft_auc_f1`'s default track the hard value but gave no training
      gain on `tb.make_toy_task`, ``docs/soft_relaxation.md``); True or
      ``"local"``, False: as in `tb.soft_auc_f1`.

  Returns:
    ``loss(params, batch, key, temperature=None) -> scalar``: `batch` is a
    `QueryBatch(inputs, rows)`; `key` draws the null replicates; `temperature`
    (optional, may be traced) overrides the default, e.g. for annealing
    without recompiling.

  **Flax NNX.** Pass the module as `predict_fn`; the loss then takes the
  module as its first argument, ``loss(model, batch, key)``, and is used
  inside `nnx.value_and_grad` / `nnx.jit` like any layer. It runs the module
  functionally (`nnx.split`, one vmapped call over the real and randomised
  inputs) in the mode it is set to (train mode while training): Dropout draws
  the same masks for the real and the randomised inputs of a call (fresh ones
  each call, from the module's RNG streams), BatchNorm normalises each
  replicate with its own batch statistics, and the state left by the
  real-input pass (RNG counts, running averages) is written back into the
  module with `nnx.update`, as calling the module would. For `jax.grad` over
  arrays: ``model = nnx.merge(graphdef, params, rest, copy=True)`` inside the loss
  function, call the loss, and return ``nnx.state(model, nnx.Not(nnx.Param))``
  as the new `rest`.

  **One convention.** `predict_fn(params, inputs)` here; `tb.model_null`
  takes `inputs -> predictions`, so the same model is evaluated there as
  ``tb.model_null(functools.partial(predict_fn, params), ...)`` (its arrays
  are traced, not compiled in). A Flax NNX module is passed as is to both.

  Example (see ``examples/train_auxiliary_loss.py`` for a full run)::

    aux = tb.make_soft_auc_f1_loss(predict, train_profiles, n_null=16)

    def total(params, batch, key, lam=1.0):
      mse = jnp.mean((predict(params, batch.inputs) - train_profiles[batch.rows]) ** 2)
      return mse + lam * aux(params, batch, key)

    value, grads = jax.value_and_grad(total)(params, tb.QueryBatch(inputs, rows), key)
  """
  setup = _setup(predict_fn, references, relevance, randomize, leaves, n_null, metric)
  checks.check_k(k)
  default_temps = temperatures.resolve_temperatures(temperature)

  def loss(params, batch, key, temperature=None):
    inputs, rows = _unpack(batch, setup.relevance.shape[0])
    temps = (default_temps if temperature is None
             else temperatures.resolve_temperatures(temperature))
    model = _model(setup, params, "as_is")
    _check_prediction_shape(setup, model, inputs, rows.shape[0])
    keys = jax.random.split(key, setup.n_null)
    x, null_x, state = _real_and_null_predictions(setup, model, inputs, keys)
    if model.module is not None:
      from flax import nnx
      nnx.update(model.module, state)
    value = _loss_from_predictions(setup, x, null_x, rows, temps, k, relative)
    # rows out of range are clamped by the gathers under jit: NaN, not a number
    return validation.poison(value, _rows_out_of_range(rows, setup.relevance.shape[0]))

  return loss


# The closure factory under its first name.
soft_auc_f1_loss = make_soft_auc_f1_loss


def _loss_from_predictions(setup: _Setup, x, null_x, rows, temps, k, relative) -> jax.Array:
  """`1 - soft AUC-F1` of predictions `x` `[b, G]` against their null `null_x` `[B, b, G]`."""
  rel_rows = setup.relevance[rows]
  s = similarity_lib.similarity(x, setup.references, metric=setup.metric)
  m, mb = _split_own_scores(setup, x, null_x, rows, rel_rows)
  value = soft_area.soft_auc_f1_kernel(s, rel_rows, m, mb, temps, jnp.asarray(k, s.dtype),
                                       relative=relative, alpha_grid=None,
                                       alpha_chunk=soft_area.DEFAULT_ALPHA_CHUNK)
  # under jit: a query without a relevant candidate or non-finite predictions give NaN
  value = validation.poison(value, soft_area.invalid_inputs(s, rel_rows, m, mb))
  return (1.0 - value).astype(s.dtype)


def auc_f1_loss(
    predictions: jax.Array,
    null_predictions: jax.Array,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    metric: types.Metric = "sqeuclidean",
    k: float = 1,
    temperature: temperatures.Temperature = temperatures.DEFAULT_TEMPERATURE,
    relative: Any = "global",
) -> jax.Array:
  r"""`1 - soft AUC-F1` of predictions against their null: the plain array loss (SPEC §5).

  The optax-style counterpart of `tb.make_soft_auc_f1_loss`, for a training
  step that runs the model itself: with similarities
  `s = tb.similarity(predictions, references)`, own scores `m_q` (mean
  similarity to the query's relevant candidates) and null own scores `m_q^b`
  of `null_predictions[b]`,

  .. math:: \mathcal{L} = 1 - \mathrm{soft\_auc\_f1}(s, \mathrm{rel}, m, m^{1..B}).

  Gradients flow into both `predictions` and `null_predictions`. For exact
  ties (p = 1 for a model that ignores its input), compute both in one
  vmapped call of the model, as the factory does.

  Args:
    predictions: `[b, G]` predictions from the real inputs.
    null_predictions: `[B, b, G]` predictions from `B` randomised copies of
      the inputs.
    references: `[C, G]` candidate profiles.
    relevance: `[b, C]` boolean relevance of each query; default: the
      identity (`b == C`, query `q` ↔ reference `q`).
    metric, k, temperature, relative: as in `tb.make_soft_auc_f1_loss`.

  Returns:
    The scalar loss in `[0, 1]`, in the dtype of the similarities.

  Example::

    keys = jax.random.split(key, 16)
    x = jax.vmap(lambda i: predict(params, i))(jnp.concatenate([inputs[None],
        jax.vmap(tb.shuffle_features, in_axes=(0, None))(keys, inputs)]))
    loss = tb.auc_f1_loss(x[0], x[1:], references[rows], metric="cosine")
  """
  setup = _setup(lambda p, i: i, references, relevance, "shuffle_features", None, 1, metric)
  x = validation.as_float_array(predictions, "predictions", ndim=2)
  null_x = validation.as_float_array(null_predictions, "null_predictions", ndim=3)
  want = (setup.relevance.shape[0], setup.references.shape[1])
  if tuple(x.shape) != want:
    raise ValueError(f"`predictions` must have shape (b, G) = {want} (one row per row of "
                     f"`relevance`, one column per feature of `references`), got "
                     f"{tuple(x.shape)}")
  if tuple(null_x.shape[1:]) != want or null_x.shape[0] < 1:
    raise ValueError(f"`null_predictions` must have shape (B, b, G) = (B, {want[0]}, "
                     f"{want[1]}) with B >= 1, got {tuple(null_x.shape)}")
  checks.check_k(k)
  rows = jnp.arange(want[0])
  return _loss_from_predictions(setup, x, null_x, rows,
                                temperatures.resolve_temperatures(temperature), k, relative)


def make_auc_f1_metric_update(
    predict_fn: PredictFn,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    n_null: int = 100,
    null_chunk: int = 25,
    randomize: Any = "shuffle_features",
    leaves: Any = None,
    metric: types.Metric = "sqeuclidean",
    own_score: str = "similarity",
    ties: types.Ties = "average",
    module_mode: str = "eval",
) -> Callable[..., metrics_lib.AucF1Metric]:
  """Builds `update(state, params, batch, key) -> state`: a batch into a `tb.AucF1Metric`.

  The model-in-the-loop null of `tb.model_null`, one batch of queries at a
  time: replicate `b` randomises the batch with `fold_in(key, b)`, and query
  `i` of the batch with its own stream `positions[i]` (see
  `tb.shuffle_features`), so streaming a held-out set in batches (any sizes,
  any order, on any devices, then `merge`) and calling `state.compute()`
  gives what the one-shot ``tb.model_null(model, inputs, references,
  relevance, key=key, n_null=n_null).auc_f1()`` gives, bit for bit (the same
  integer counts and ranks; only a null score within rounding of the
  observed one, where the batch shapes round the model differently, could
  differ). Exactness needs the row-wise ``"shuffle_features"`` randomiser;
  ``"permute_rows"`` and callables randomise each batch on its own.

  Args:
    predict_fn: `(params, inputs) -> [b, G]`, or a Flax NNX module (then
      `params` is the module; it is run in `module_mode` and not changed).
    references, relevance, randomize, leaves, metric: as in
      `tb.make_soft_auc_f1_loss`.
    n_null: null replicates `B` per query (the metric's `n_null`).
    null_chunk: replicates predicted at a time (memory `O(null_chunk·b·G)`).
    own_score: ``"similarity"``, ``"r2"`` or ``"pearson"`` (see `tb.model_null`).
    ties: tie rule of the truth ranks (see `tb.truth_ranks`).
    module_mode: ``"eval"`` or ``"as_is"`` for a module (see `tb.model_null`).

  Returns:
    ``update(state, params, batch, key, positions=None) -> state``: `state`
    an `AucF1Metric`, `batch` a `QueryBatch(inputs, rows)` (`rows` index
    `relevance`), `positions` `[b]` the queries' slots in the metric and
    their randomisation streams (default: `batch.rows`). Pure and jit-able
    (for a module, under `nnx.jit`).
  """
  return _metric_update(predict_fn, references, relevance, n_null, null_chunk, randomize,
                        leaves, metric, own_score, ties, module_mode)[0]


def _metric_update(predict_fn, references, relevance, n_null, null_chunk, randomize, leaves,
                   metric, own_score, ties, module_mode):
  """`(update, setup)` of `make_auc_f1_metric_update`."""
  setup = _setup(predict_fn, references, relevance, randomize, leaves, n_null, metric)
  null_chunk = checks.check_positive_int(null_chunk, "null_chunk")
  null_checks.check_options(metric, own_score)
  models.check_module_mode(module_mode)
  rand = null_predict.Randomizer(randomize, None if leaves is None else tuple(
      [leaves] if isinstance(leaves, str) else leaves))
  mode = own_lib.own_mode(own_score, metric, setup.truth is not None)
  spec = _NullSpec(rand, metric, mode, setup.n_null, min(int(null_chunk), setup.n_null), ties)

  def update(state, params, batch, key, positions=None):
    if not isinstance(state, metrics_lib.AucF1Metric):
      raise TypeError(f"`state` must be a tb.AucF1Metric, got {type(state).__name__}")
    if state.n_null != setup.n_null:
      raise ValueError(f"`state` counts {state.n_null} null replicates, this update "
                       f"{setup.n_null}")
    inputs, rows = _unpack(batch, setup.relevance.shape[0])
    model = _model(setup, params, module_mode)
    _check_prediction_shape(setup, model, inputs, rows.shape[0])
    own, counts, ranks, bad = _batch_null(
        model.params, inputs, setup.references, setup.relevance[rows], rows if positions is None
        else jnp.asarray(positions), key, apply=model.apply, spec=spec)
    # a row out of range (clamped by the gather under jit) leaves its query invalid
    bad = bad | _rows_out_of_range(rows, setup.relevance.shape[0])
    return state._write(rows if positions is None else positions, own, counts, ranks, bad)

  return update, setup


class _NullSpec(NamedTuple):
  """The static settings of `_batch_null` (hashable: one compilation per setting)."""

  randomize: Callable  # a hashable `null_predict.Randomizer`
  metric: str
  mode: str  # own-score mode of `own_lib.own_mode`
  n_null: int
  chunk: int  # replicates predicted at a time
  ties: str


@functools.partial(jax.jit, static_argnames=("apply", "spec"))
def _batch_null(params, inputs, y, rel_rows, positions, key, *, apply, spec):
  """`[b]` own scores, exceedance counts, truth ranks, non-finite flags of one batch.

  The arithmetic of `tb.model_null` on the batch's rows: the observed
  predictions come from a vmapped pass like the replicates' (`null_predict.predict_observed`)
  and are scored by the same kernels, so a replicate equal to the real
  prediction is an exact tie.
  """
  randomize, metric, mode, n_null, chunk, ties = spec
  dtype = jnp.result_type(jax.eval_shape(apply, params, inputs).dtype, y.dtype)
  y = y.astype(dtype)
  ctx = own_lib.own_context(y, rel_rows, mode=mode)
  x_obs = null_predict.predict_observed(params, inputs, key, apply=apply, randomize=randomize,
                                        batch=chunk).astype(dtype)
  own_obs, s_obs = null_scoring.observed_scores(x_obs, ctx, metric=metric, mode=mode)
  ranks = ranking.truth_ranks(s_obs, rel_rows, ties=ties)
  observed = validation.nan_to_neg_inf(own_obs)

  def add_chunk(carry, i):
    counts, bad = carry
    idx = i * chunk + jnp.arange(chunk, dtype=jnp.int32)
    valid = idx < n_null
    xb = jax.vmap(lambda j: apply(params, randomize(jax.random.fold_in(key, j), inputs,
                                                    row_ids=positions)))(idx)
    own = null_scoring.score_batch(xb, valid, x_obs, own_obs, None, ctx, metric=metric,
                                   mode=mode, candidate_level=False)["own"]
    # the `>=` of `tb.empirical_pvalues`: a NaN null score counts, a NaN observed one is -inf
    exceed = ((own >= observed[None]) | jnp.isnan(own)) & valid[:, None]
    nonfinite = jnp.any(~jnp.isfinite(xb), axis=2) & valid[:, None]
    counts = counts + jnp.sum(exceed, axis=0, dtype=jnp.int32)
    return (counts, bad | jnp.any(nonfinite, axis=0)), None

  init = (jnp.zeros(own_obs.shape, jnp.int32), ~jnp.all(jnp.isfinite(x_obs), axis=1))
  (counts, bad), _ = jax.lax.scan(add_chunk, init, jnp.arange(-(-n_null // chunk)))
  return own_obs, counts, ranks, bad


def hard_auc_f1_validation(
    predict_fn: PredictFn,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    randomize: Any = "shuffle_features",
    leaves: Any = None,
    n_null: int = 100,
    null_chunk: int = 25,
    metric: types.Metric = "sqeuclidean",
    k: int = 1,
    module_mode: str = "eval",
) -> Callable[[Any, Any, jax.Array], jax.Array]:
  """Builds `validate(params, batch, key) -> hard AUC-F1` (SPEC §3–4).

  The exact metric of the batch's queries with the null of `tb.model_null`:
  ``validate(params, QueryBatch(inputs, rows), key)`` equals
  ``tb.model_null(functools.partial(predict_fn, params), inputs, references,
  relevance[rows], key=key, n_null=n_null).auc_f1(k=k).auc`` (for a module:
  ``tb.model_null(model, ...)``): hard truth ranks (``ties="average"``),
  empirical p-values (`>=` counts as an exceedance), exact step area.
  Replicates are streamed `null_chunk` at a time and only exceedance counts
  are kept, so memory is `O(b·C + null_chunk·b·G)`. The same `key` gives the
  same number. To validate a held-out set in batches, accumulate a
  `tb.AucF1Metric` with `tb.make_auc_f1_metric_update` instead.

  Args:
    predict_fn, references, relevance, randomize, leaves, metric: as in
      `tb.make_soft_auc_f1_loss` (a Flax NNX module is passed as the model).
    n_null: null replicates `B`; the AUC-F1 is at most `1 - 1/(B+1)`.
    null_chunk: replicates predicted at a time.
    k: a query is correct when its truth ranks within the top `k`.
    module_mode: for a module, ``"eval"`` (default: an eval-mode copy) or
      ``"as_is"`` (see `tb.model_null`); the module is never changed.

  Returns:
    ``validate(params, batch, key) -> scalar`` with `batch` a
    `QueryBatch(inputs, rows)`, e.g. the held-out perturbations; jit-compiled
    inside, and callable inside `jax.jit` (NaN where an input is invalid).
  """
  k = checks.check_k(k, integer=True)
  update, setup = _metric_update(predict_fn, references, relevance, n_null, null_chunk,
                                 randomize, leaves, metric, "similarity", "average",
                                 module_mode)
  dtype = jnp.promote_types(setup.references.dtype, jnp.float32)

  @jax.jit
  def validate(params, batch, key):
    inputs, rows = _unpack(batch, setup.relevance.shape[0])
    b = rows.shape[0]
    state = metrics_lib.AucF1Metric.empty(b, setup.n_null, dtype)
    state = update(state, params, QueryBatch(inputs, rows), key, positions=jnp.arange(b))
    return state.compute(k=int(k)).auc  # traced here: NaN where an input is invalid

  return validate
