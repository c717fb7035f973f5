"""Permutation nulls: model-in-the-loop, precomputed and label-permutation (SPEC §3).

"If a model doesn't use the information in its input, removing it won't change
its predictions." Three nulls answer that question and return the same
`NullResult`:

- `model_null`: the model predicts again from randomised inputs, `B` times;
- `precomputed_null`: the `B` null predictions were made elsewhere (any
  framework) and are given as an array or as files;
- `label_null`: no model; is prediction `q` closer to its truth than the
  predictions for the other perturbations are? (exact, the no-model default).

Streaming. Replicates run in chunks through a module-level jitted kernel
(split over devices, each looping over vmapped batches of its share). Query-level null own
scores `[B, Q]` are kept; candidate-level similarities `[Q, C]` of a replicate
only live inside its chunk, where they become int32 exceedance counts that add
up over chunks, so the `[B, Q, C]` null tensor never exists.

Reproducibility. Replicate `b` uses the key `jax.random.fold_in(key, b)` and
nothing else, so its randomised inputs are `randomize(fold_in(key, b), inputs)`
whatever the chunk size or the number of devices, and the p-values are
bit-identical across both.

Ties. A replicate whose prediction for query `q` equals the real prediction bit
for bit is an exact tie for that query (its null scores are set to the observed
ones), so a model that ignores its input gets `p = 1` regardless of
floating-point reassociation between differently batched computations.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.core import label_scoring
from twinbench_jax._src.nulls import models
from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.nulls import randomize as randomize_lib
from twinbench_jax._src.core import ranking
from twinbench_jax._src.nulls import sharding
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation

OWN_SCORES = ("similarity", "r2", "pearson")
NULL_KINDS = ("model", "precomputed", "label")

_HIGHEST = jax.lax.Precision.HIGHEST
# Precomputed replicates read into host memory per kernel call when `chunk_size` is None.
_HOST_CHUNK_BYTES = 1 << 30


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class NullResult:
  """Observed scores, the null and the p-values of one permutation null (SPEC §3).

  A frozen dataclass registered as a pytree (the arrays are its leaves; `kind`,
  `n_null`, `metric` and `own_score` are static), so it passes through
  `jax.jit` and `jax.tree_util`.

  Attributes:
    own_scores: `[Q]` observed own score `m_q` of every prediction.
    null_own_scores: `[B, Q]` own scores of the null replicates: predictions
      from randomised inputs (model, precomputed), or for the label null the
      predictions of the other queries against query `q`'s truth
      (`null_own_scores[b, q]` = own score of prediction `(q + 1 + b) mod Q`).
    pvalues: `[Q]` `(1 + #{b : null_own_scores[b, q] >= own_scores[q]}) / (B + 1)`.
    scores: `[Q, C]` observed similarities (for ranks and candidate-level use).
    relevance: `[Q, C]` boolean relevance the scores were made with.
    candidate_pvalues: `[Q, C]` entry-wise p-values
      `(1 + #{b : s^b[q, c] >= s[q, c]}) / (B + 1)` when the null was run with
      `candidate_level=True`, else None.
    kind: ``"model"``, ``"precomputed"`` or ``"label"``.
    n_null: number of null replicates `B` (`Q - 1` for the label null).
    metric: the similarity metric.
    own_score: ``"similarity"``, ``"r2"`` or ``"pearson"``.
  """

  own_scores: jax.Array
  null_own_scores: jax.Array
  pvalues: jax.Array
  scores: jax.Array
  relevance: jax.Array
  candidate_pvalues: Optional[jax.Array]
  kind: str
  n_null: int
  metric: str
  own_score: str

  def __repr__(self) -> str:
    q, c = self.scores.shape
    return (f"NullResult(kind={self.kind!r}, n_null={self.n_null}, Q={q}, C={c}, "
            f"metric={self.metric!r}, own_score={self.own_score!r}, "
            f"candidate_level={self.candidate_pvalues is not None})")

  def ranks(self, *, ties: str = "average") -> jax.Array:
    """`[Q]` rank of the truth of every query (SPEC §2), see `tb.truth_ranks`."""
    return ranking.truth_ranks(self.scores, self.relevance, ties=ties)

  def auc_f1(self, *, k: int = 1, ties: str = "average") -> auc_lib.AucF1Result:
    """Query-level AUC-F1 (SPEC §4): called at α when `p_q <= α`, correct when rank <= `k`."""
    if k < 1:
      raise ValueError(f"`k` must be >= 1, got {k}")
    return auc_lib.auc_f1(self.pvalues, self.ranks(ties=ties) <= k)

  def candidate_auc_f1(self) -> auc_lib.AucF1Result:
    """Candidate-level AUC-F1 (SPEC §4) from `candidate_pvalues`."""
    if self.candidate_pvalues is None:
      raise ValueError("this null was run without candidate-level p-values; run it again "
                       "with `candidate_level=True`")
    return auc_lib.candidate_auc_f1(self.candidate_pvalues, self.relevance)


jax.tree_util.register_dataclass(
    NullResult,
    data_fields=["own_scores", "null_own_scores", "pvalues", "scores", "relevance",
                 "candidate_pvalues"],
    meta_fields=["kind", "n_null", "metric", "own_score"])


# --------------------------------------------------------------------------- own scores
#
# The own score of a replicate only needs the prediction and the truth of its own
# query, O(Q G), not the full [Q, C] similarity. Each mode below is the SPEC §1
# own score written so that it needs no [Q, C] matrix (except "full").
#   sqeuclidean: mean_c -|x - y_c|^2 = -(|x - t|^2 + spread), t = mean relevant reference
#   cosine/pearson: mean_c <u(x), u(y_c)> = <u(x), mean_c u(y_c)>, u = unit (centred) rows
#   euclidean/l1 with one relevant candidate per query: the direct distance to it
#   full: euclidean/l1 with several relevant candidates: mean over the [Q, C] similarity
#   r2: 1 - |x - t|^2 / |t - mean(t)|^2;  corr: Pearson correlation of x and t


def _own_mode(own_score: str, metric: str, single: bool) -> str:
  if own_score == "r2":
    return "r2"
  if own_score == "pearson":
    return "corr"
  if metric in ("sqeuclidean", "cosine", "pearson"):
    return metric
  return metric if single else "full"


def _centred(a: jax.Array) -> jax.Array:
  return a - a.mean(axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("mode",))
def _own_context(y: jax.Array, rel: jax.Array, *, mode: str) -> dict:
  """Per-query constants of the own score: the truth and what the mode needs."""
  w = own_lib._relevance_weights(rel, y.dtype)
  truth = jnp.matmul(w, y, precision=_HIGHEST)  # [Q, G] mean of the relevant references
  ctx = {"y": y}
  if mode == "sqeuclidean":
    # Spread of the relevant references around their mean (0 with one relevant candidate).
    d = similarity_lib.squared_distances(truth, y)
    ctx.update(target=truth, offset=jnp.sum(jnp.where(rel, d, 0.0) * w, axis=1))
  elif mode in ("cosine", "pearson"):
    yy = _centred(y) if mode == "pearson" else y
    ctx.update(target=jnp.matmul(w, similarity_lib._unit_rows(yy), precision=_HIGHEST))
  elif mode in ("euclidean", "l1"):
    ctx.update(target=truth)
  elif mode == "full":
    ctx.update(weights=w, rel=rel)
  elif mode == "r2":
    tc = _centred(truth)
    ctx.update(target=truth, offset=jnp.sum(tc * tc, axis=1))
  elif mode == "corr":
    ctx.update(target=similarity_lib._unit_rows(_centred(truth)))
  else:  # pragma: no cover - checked by the callers
    raise AssertionError(mode)
  return ctx


def _own(x: jax.Array, s: Optional[jax.Array], ctx: dict, *, mode: str) -> jax.Array:
  """`[Q]` own scores of predictions `x` `[Q, G]` (`s`: `[Q, C]` similarities, "full" only)."""
  if mode == "full":
    return jnp.sum(jnp.where(ctx["rel"], s, 0.0) * ctx["weights"], axis=1)
  t = ctx["target"]
  if mode in ("sqeuclidean", "euclidean", "r2"):
    d = x - t
    ss = jnp.sum(d * d, axis=1)
    if mode == "sqeuclidean":
      return -(ss + ctx["offset"])
    if mode == "euclidean":
      return -jnp.sqrt(ss)
    # A constant truth (zero variance) has no R^2: NaN or -inf, which never beats a null.
    return 1.0 - ss / ctx["offset"]
  if mode == "l1":
    return -jnp.sum(jnp.abs(x - t), axis=1)
  if mode == "cosine":
    return jnp.sum(similarity_lib._unit_rows(x) * t, axis=1)
  if mode in ("pearson", "corr"):
    return jnp.sum(similarity_lib._unit_rows(_centred(x)) * t, axis=1)
  raise AssertionError(mode)  # pragma: no cover


# --------------------------------------------------------------------------- kernels


def _row_checks(xb: jax.Array, x_obs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`([b, Q] row equals the observed row, [b] replicate is finite)` for `xb` `[b, Q, G]`.

  Both counts come from one variadic reduction: a single pass over the batch,
  where separate `all`s cost XLA's CPU backend three times as much.
  """
  n_diff, n_bad = jax.lax.reduce(
      ((xb != x_obs).astype(jnp.int32), (~jnp.isfinite(xb)).astype(jnp.int32)),
      (np.int32(0), np.int32(0)), lambda a, b: (a[0] + b[0], a[1] + b[1]), (2,))
  return n_diff == 0, jnp.all(n_bad == 0, axis=1)


def _replicate_scores(x, s, same, own_obs, s_obs, ctx, *, mode, candidate_level):
  """One replicate `x` `[Q, G]` with similarities `s` `[Q, C]` (or None when not needed)
  and `same` `[Q]` (row equals the observed one): null own scores `[Q]` and,
  candidate level, `s^b >= s` `[Q, C]`."""
  own = _own(x, s, ctx, mode=mode)
  # A prediction that did not change is an exact tie, whatever the rounding.
  own = jnp.where(same, own_obs, own)
  if not candidate_level:
    return own, None
  s = jnp.where(same[:, None], s_obs, s)
  return own, validation.nan_to_neg_inf(s) >= validation.nan_to_neg_inf(s_obs)


def _score_batch(xb, valid, x_obs, own_obs, s_obs, ctx, *, metric, mode, candidate_level):
  """A batch `xb` `[b, Q, G]` of null predictions -> a dict of

  - ``own``: `[b, Q]` null own scores,
  - ``bad``: number of valid replicates with a non-finite prediction,
  - ``counts`` (candidate level): `[Q, C]` int32 exceedance counts of the valid replicates.
  """
  xb = xb.astype(x_obs.dtype)
  s = None
  if candidate_level or mode == "full":
    # Rows are scored independently, so the whole batch is one `[b*Q, G] x [G, C]`
    # similarity: one large matmul, and no vmap around the core's data-dependent
    # branches (under vmap a `lax.cond` runs both of them).
    b, q, g = xb.shape
    # The near-zero guard is skipped: a replicate row equal to the observed row
    # is already counted as a tie (`_replicate_scores`), and elsewhere a
    # rounding-level difference cannot turn a real difference into a tie.
    s = similarity_lib._similarity(xb.reshape(b * q, g), ctx["y"], metric=metric, exact=False)
    s = s.reshape(b, q, -1)
  same, finite = _row_checks(xb, x_obs)
  score = functools.partial(_replicate_scores, mode=mode, candidate_level=candidate_level)
  own, exceed = jax.vmap(score, in_axes=(0, 0, 0, None, None, None))(
      xb, s, same, own_obs, s_obs, ctx)
  out = {"own": own, "bad": jnp.sum(valid & ~finite, dtype=jnp.int32)}
  if candidate_level:
    out["counts"] = jnp.sum(exceed & valid[:, None, None], axis=0, dtype=jnp.int32)
  return out


def _device_loop(first, n_null, make_batch, score, *, per_device, batch, n_queries, n_cand,
                 dtype, candidate_level):
  """Replicates `first .. first + per_device - 1` of one device, one vmapped batch at a time.

  The trip count is a runtime value (the batches that hold a replicate below
  `n_null`), so the loop body is compiled once, the same way for every chunk
  size and device count, and batches past `n_null` cost nothing.
  """
  n_here = jnp.clip(n_null - first, 0, per_device)
  n_iter = (n_here + batch - 1) // batch

  def body(j, carry):
    offset = j * batch
    idx = first + offset + jnp.arange(batch, dtype=jnp.int32)
    out = score(make_batch(offset, idx), idx < n_null)
    # both indices of one integer type (the literal 0 is int64 under `jax_enable_x64`)
    new = {"own": jax.lax.dynamic_update_slice(carry["own"], out["own"].astype(dtype),
                                               (offset, jnp.zeros_like(offset))),
           "bad": carry["bad"] + out["bad"]}
    if candidate_level:
      new["counts"] = carry["counts"] + out["counts"]
    return new

  init = {"own": jnp.zeros((per_device, n_queries), dtype), "bad": jnp.zeros((), jnp.int32)}
  if candidate_level:
    init["counts"] = jnp.zeros((n_queries, n_cand), jnp.int32)
  # The loop carries per-device values (they differ between devices until the psum).
  init = sharding.varying(init)
  out = jax.lax.fori_loop(0, n_iter, body, init)
  # Sums over devices; the own scores stay split (one block of rows per device).
  return {k: v if k == "own" else jax.lax.psum(v, sharding.AXIS) for k, v in out.items()}


def _score_device_share(first, n_null, make_batch, x_obs, own_obs, s_obs, ctx, *, per_device,
                        batch, metric, mode, candidate_level):
  """One device's replicates, batches from `make_batch`, scored by `_score_batch`."""
  score = functools.partial(_score_batch, x_obs=x_obs, own_obs=own_obs, s_obs=s_obs, ctx=ctx,
                            metric=metric, mode=mode, candidate_level=candidate_level)
  return _device_loop(first, n_null, make_batch, score, per_device=per_device, batch=batch,
                      n_queries=x_obs.shape[0], n_cand=ctx["y"].shape[0], dtype=x_obs.dtype,
                      candidate_level=candidate_level)


def _replicate_outputs(out, mesh):
  # Every device ends with the whole chunk of own scores (tiny: [chunk, Q]) and the
  # sums, so results are fully replicated and readable on any host.
  own = jax.lax.with_sharding_constraint(out["own"], NamedSharding(mesh, PartitionSpec()))
  return dict(out, own=own)


def _out_specs(candidate_level):
  specs = {"own": PartitionSpec(sharding.AXIS), "bad": PartitionSpec()}
  if candidate_level:
    specs["counts"] = PartitionSpec()
  return specs


_KERNEL_STATIC = ("mesh", "per_device", "batch", "metric", "mode", "candidate_level")


@functools.partial(jax.jit, static_argnames=("apply", "randomize") + _KERNEL_STATIC)
def _model_chunk(start, n_null, key, params, inputs, x_obs, own_obs, s_obs, ctx, *,
                 apply, randomize, mesh, per_device, batch, metric, mode, candidate_level):
  """Replicates `start .. start + chunk - 1`: randomise, predict, score, count."""

  def local(start, n_null, key, params, inputs, x_obs, own_obs, s_obs, ctx):
    first = start + jax.lax.axis_index(sharding.AXIS) * per_device

    def make_batch(offset, idx):
      del offset
      return jax.vmap(lambda i: apply(params, randomize(jax.random.fold_in(key, i), inputs)))(
          idx)

    return _score_device_share(first, n_null, make_batch, x_obs, own_obs, s_obs, ctx,
                               per_device=per_device, batch=batch, metric=metric, mode=mode,
                               candidate_level=candidate_level)

  rep = PartitionSpec()
  out = sharding.shard_map(local, mesh=mesh, in_specs=(rep,) * 9,
                           out_specs=_out_specs(candidate_level))(
                               start, n_null, key, params, inputs, x_obs, own_obs, s_obs, ctx)
  return _replicate_outputs(out, mesh)


@functools.partial(jax.jit, static_argnames=_KERNEL_STATIC)
def _precomputed_chunk(start, n_null, xb, x_obs, own_obs, s_obs, ctx, *, mesh, per_device,
                       batch, metric, mode, candidate_level):
  """Scores a chunk of given null predictions `[chunk, Q, G]` split over the devices."""

  def local(start, n_null, xb, x_obs, own_obs, s_obs, ctx):
    first = start + jax.lax.axis_index(sharding.AXIS) * per_device

    def make_batch(offset, idx):
      del idx
      return jax.lax.dynamic_slice_in_dim(xb, offset, batch, axis=0)

    return _score_device_share(first, n_null, make_batch, x_obs, own_obs, s_obs, ctx,
                               per_device=per_device, batch=batch, metric=metric, mode=mode,
                               candidate_level=candidate_level)

  rep, split = PartitionSpec(), PartitionSpec(sharding.AXIS)
  out = sharding.shard_map(local, mesh=mesh, in_specs=(rep, rep, split, rep, rep, rep, rep),
                           out_specs=_out_specs(candidate_level))(
                               start, n_null, xb, x_obs, own_obs, s_obs, ctx)
  return _replicate_outputs(out, mesh)


@functools.partial(jax.jit, static_argnames=("metric", "mode"))
def _observed_scores(x, ctx, *, metric, mode):
  """Observed own scores `[Q]` and similarities `[Q, C]` (those of `tb.similarity`)."""
  s = similarity_lib._similarity(x, ctx["y"], metric=metric)
  return _own(x, s, ctx, mode=mode), s


@functools.partial(jax.jit, static_argnames=("apply", "randomize", "batch"))
def _predict(params, inputs, key, *, apply, randomize, batch):
  """The observed predictions `apply(params, inputs)`, computed as a null batch is.

  The replicates run the model vmapped over `batch` randomised inputs, and an
  XLA matmul may round a batch of rows differently from a single row (seen on
  CPUs: every element of a small MLP's output moved by an ulp). So the observed
  predictions are row 0 of the same batched forward pass, on `batch` copies of
  the real inputs: a model that ignores its input then predicts the observed
  rows bit for bit and gets p = 1 (SPEC §3). The leaves the randomiser changes
  are batched copies there, the others stay unbatched, as in `_model_chunk`;
  the barrier keeps XLA from folding the copies back into one row.
  """

  def one(i):
    randomized = randomize(jax.random.fold_in(key, i), inputs)
    real = i >= 0  # always true, but batched like the replicate index
    return apply(params, jax.lax.optimization_barrier(jax.tree.map(
        lambda o, r: o if r is o else jnp.where(real, o, r), inputs, randomized)))

  return jax.vmap(one)(jnp.arange(batch))[0]


# --------------------------------------------------------------------------- predict_fn


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


def _split_predict(predict_fn: Callable, module_mode: str = "eval") -> tuple[Callable, Any]:
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
class _Randomizer:
  """A hashable randomiser spec, resolved at trace time by `tb.resolve_randomizer`."""

  spec: Any
  leaves: Optional[tuple]

  def __call__(self, key, inputs, row_ids=None):
    fn = randomize_lib.resolve_randomizer(self.spec, leaves=self.leaves)
    if row_ids is None or callable(self.spec):
      return fn(key, inputs)
    return fn(key, inputs, row_ids)


# --------------------------------------------------------------------------- checks


def _check_key(key: Any) -> jax.Array:
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"`key` must be a single PRNG key, got a key array of shape {key.shape}")
    return key
  if dtype == np.uint32 and tuple(np.shape(key)) == (2,):
    return jnp.asarray(key)
  raise TypeError(f"`key` must be a JAX PRNG key such as `jax.random.key(0)`, got "
                  f"{type(key).__name__}{'' if dtype is None else f' of dtype {dtype}'}")


def _check_n_null(n_null: Any) -> int:
  if isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer)):
    raise TypeError(f"`n_null` must be an int (number of null replicates), got "
                    f"{type(n_null).__name__}")
  if n_null < 1:
    raise ValueError(f"`n_null` must be >= 1 (number of null replicates), got {n_null}")
  if n_null >= 2**31 - 1:
    raise ValueError(f"`n_null` must be < 2**31 - 1, got {n_null}")
  return int(n_null)


def _check_options(metric: str, own_score: str) -> None:
  if metric not in similarity_lib.METRICS:
    raise ValueError(f"unknown `metric` {metric!r}; choose one of {similarity_lib.METRICS}")
  if own_score not in OWN_SCORES:
    raise ValueError(f"unknown `own_score` {own_score!r}; choose one of {OWN_SCORES}")


def _check_references(references, relevance, n_queries: Optional[int] = None):
  if relevance is not None:
    ref_kind, rel_kind = (np.asarray(a).dtype.kind if getattr(a, "dtype", None) is None
                          else np.dtype(a.dtype).kind for a in (references, relevance))
    if ref_kind == "b" and rel_kind != "b":
      raise ValueError(
          "`references` is boolean and `relevance` is not: are they swapped? The order is "
          "(predictions, ..., references [C, G] float profiles, relevance [Q, C] bool)")
  y = validation.as_float_array(references, "references", ndim=2)
  validation.check_no_nan(y, "references")
  if relevance is None:
    q = y.shape[0] if n_queries is None else n_queries
    if q != y.shape[0]:
      raise ValueError(
          f"without `relevance`, query q must belong to reference q, so both need the same "
          f"number of rows; got {q} queries and references {tuple(y.shape)}")
    relevance = jnp.eye(q, dtype=bool)
  rel = validation.as_bool_array(relevance, "relevance", ndim=2)
  if rel.shape[1] != y.shape[0]:
    raise ValueError(f"`relevance` must have one column per reference (C = {y.shape[0]}), "
                     f"got shape {tuple(rel.shape)}")
  if n_queries is not None and rel.shape[0] != n_queries:
    raise ValueError(f"`relevance` must have one row per query (Q = {n_queries}), got shape "
                     f"{tuple(rel.shape)}")
  validation.check_every_query_has_relevant(rel)
  return y, rel


def _check_predictions(x: Any, name: str, y: jax.Array, rel: jax.Array) -> jax.Array:
  x = validation.as_float_array(x, name, ndim=2)
  want = (rel.shape[0], y.shape[1])
  if tuple(x.shape) != want:
    raise ValueError(f"`{name}` must have shape (Q, G) = {want} (one row per query of "
                     f"`relevance`, one column per feature of `references`), got "
                     f"{tuple(x.shape)}")
  validation.check_no_nan(x, name)
  return x


def _check_precomputed_order(x_obs: Any, null_predictions: Any, references: Any) -> None:
  """Names the likely swap when `precomputed_null`'s arrays come in the wrong order.

  The order is (predictions `[Q, G]`, null_predictions `[B, Q, G]`, references
  `[C, G]`): a 3-D array in another place is almost surely the null replicates.
  """
  def ndim(a):
    shape = getattr(a, "shape", None)
    return None if shape is None else len(shape)

  order = ("tb.precomputed_null(predictions [Q, G], null_predictions [B, Q, G], "
           "references [C, G], relevance [Q, C])")
  null_dim = ndim(null_predictions)
  for name, a in (("predictions", x_obs), ("references", references)):
    if ndim(a) == 3:
      swap = (f"; are `{name}` and `null_predictions` swapped? The order is {order}"
              if null_dim == 2 else f"; it must be 2-D. The order is {order}")
      raise ValueError(f"`{name}` has shape {tuple(a.shape)}, the shape of a stack of null "
                       f"replicates (B, Q, G){swap}")


def _check_inputs(inputs: Any) -> Any:
  inputs = jax.tree_util.tree_map(jnp.asarray, inputs)
  flat = jax.tree_util.tree_flatten_with_path(inputs)[0]
  if not flat:
    raise ValueError("`inputs` has no array leaves")
  for path, leaf in flat:
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
      validation.check_no_nan(leaf, "inputs" + jax.tree_util.keystr(path))
  return inputs


def _check_randomizer(rand: Callable, key: jax.Array, inputs: Any) -> None:
  out = jax.eval_shape(rand, jax.random.fold_in(key, 0), inputs)
  want = jax.tree_util.tree_structure(inputs)
  got = jax.tree_util.tree_structure(out)
  if want != got:
    raise ValueError(f"the randomiser `randomize` changed the structure of the inputs from "
                     f"{want} to {got}; it must return inputs of the same structure, shapes "
                     "and dtypes")
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(inputs)[0],
                          jax.tree_util.tree_leaves(out)):
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
      raise ValueError(
          f"the randomiser `randomize` changed inputs{jax.tree_util.keystr(path)} from "
          f"shape {tuple(a.shape)} {a.dtype} to {tuple(b.shape)} {b.dtype}; a randomiser must "
          "keep every leaf's shape and dtype")


def _check_predict_output(apply, params, inputs, y, rel) -> None:
  out = jax.eval_shape(apply, params, inputs)
  want = (rel.shape[0], y.shape[1])
  shape = getattr(out, "shape", None)
  if shape is None or tuple(shape) != want:
    got = (f"shape {tuple(shape)}" if shape is not None
           else f"a {type(out).__name__}, not a single array")
    raise ValueError(
        f"`predict_fn(inputs)` returned {got}, but it must return one prediction row per query "
        f"(a row of `relevance`; without `relevance`, a row of `references`) and one column "
        f"per feature of `references`: (Q, G) = {want}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise TypeError(f"`predict_fn(inputs)` must return floating predictions, got dtype "
                    f"{out.dtype}")


def _bytes_per_replicate(q: int, c: int, g: int, candidate_level: bool, inputs: Any) -> int:
  n_inputs = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(inputs))
  return 4 * (3 * q * g + (3 * q * c if candidate_level else 0) + 3 * n_inputs)


def _progress_bar(total: int, progress: bool, desc: str):
  # disable=None: shown on a terminal, silent when stderr is not one; one bar per job
  # (process 0's) when several processes run it.
  from tqdm import tqdm  # imported when a null runs, not with the array core

  show = progress and jax.process_index() == 0
  return tqdm(total=total, desc=desc, unit="chunk", disable=None if show else True)


def _stream(n_chunks: int, run_chunk: Callable[[int], dict], progress: bool, desc: str):
  """Runs the chunks and adds up their outputs; one chunk runs while the next is sent.

  Returns `(own [n_chunks * chunk, Q], counts [Q, C] or None, bad replicates)`.
  """
  owns, total = [], {}
  with _progress_bar(n_chunks, progress, desc) as bar:
    pending = None
    for i in range(n_chunks):
      out = sharding.host_local(run_chunk(i))
      owns.append(out["own"])
      for k, v in out.items():
        if k != "own":
          total[k] = v if k not in total else total[k] + v
      if pending is not None:
        jax.block_until_ready(pending)
        bar.update(1)
      pending = out["own"]
    if pending is not None:
      jax.block_until_ready(pending)
      bar.update(1)
  return jnp.concatenate(owns, axis=0), total.get("counts"), int(total["bad"])


def _finish(kind, own_obs, null_own, counts, s_obs, rel, n_null, metric, own_score):
  null_own = null_own[:n_null]
  pvalues = pvalues_lib.empirical_pvalues(own_obs, null_own)
  candidate_pvalues = None
  if counts is not None:
    candidate_pvalues = pvalues_lib.pvalues_from_counts(counts, n_null).astype(s_obs.dtype)
  return NullResult(own_scores=own_obs, null_own_scores=null_own, pvalues=pvalues, scores=s_obs,
                    relevance=rel, candidate_pvalues=candidate_pvalues, kind=kind,
                    n_null=n_null, metric=metric, own_score=own_score)


def _observed(x_obs, y, rel, metric, own_score):
  """Common dtype, own-score mode and context, observed own scores and similarities."""
  dtype = jnp.result_type(x_obs.dtype, y.dtype)
  x_obs, y = x_obs.astype(dtype), y.astype(dtype)
  mode = _own_mode(own_score, metric, bool(jnp.all(jnp.sum(rel, axis=1) == 1)))
  ctx = _own_context(y, rel, mode=mode)
  own_obs, s_obs = _observed_scores(x_obs, ctx, metric=metric, mode=mode)
  return x_obs, y, mode, ctx, own_obs, s_obs


# --------------------------------------------------------------------------- public API


def model_null(
    predict_fn: Callable[[Any], jax.Array],
    inputs: Any,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    key: jax.Array,
    n_null: int = 1000,
    randomize: Union[str, Callable[[jax.Array, Any], Any]] = "shuffle_features",
    leaves: Optional[Sequence[str]] = None,
    metric: str = "sqeuclidean",
    own_score: str = "similarity",
    candidate_level: bool = False,
    chunk_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    devices: Optional[Sequence[Any]] = None,
    progress: bool = True,
    module_mode: str = "eval",
) -> NullResult:
  r"""Model-in-the-loop permutation null: predict again from randomised inputs (SPEC §3).

  Replicate `b = 0 .. B-1` predicts from
  `randomize(jax.random.fold_in(key, b), inputs)`; with `m_q^b` its own score
  and `s^b` its similarities,

  .. math::
     p_q = \frac{1 + \#\{b : m_q^b \ge m_q\}}{B + 1}, \qquad
     p_{qc} = \frac{1 + \#\{b : s^b_{qc} \ge s_{qc}\}}{B + 1}.

  A model whose output ignores its input gets `p = 1` everywhere (AUC-F1 = 0);
  one that depends strongly on it gets `p = 1/(B+1)`.

  Replicates run in chunks of `chunk_size` through one compiled kernel: each
  of the `devices` takes its share of a chunk and loops over it in vmapped
  batches of `batch_size` replicates. Only the `[B, Q]` null own scores and
  `[Q, C]` int32 exceedance counts are kept. Replicate `b` always lands in the
  batch `[k * batch_size, (k + 1) * batch_size)` with the same compiled
  arithmetic, so results are bit-identical for any `chunk_size` and any number
  of devices (`batch_size` may change the last bit of the null scores, as
  XLA sums differently batched products in a different order). On a GPU, XLA
  autotunes each compilation and may pick another matmul algorithm for
  another `chunk_size`; set ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``
  where the last bits must match across chunk sizes.

  Several processes (hosts): after `jax.distributed.initialize()` every
  process runs this same call with the same full inputs (host-local arrays,
  identical everywhere; checked through the observed own scores). The
  replicates are split over the devices of all processes, and every process
  gets the whole `NullResult` back as ordinary arrays, bit-identical to one
  process's (replicate `b` keeps its key and batch; only its device changes).

  Args:
    predict_fn: JAX-traceable `inputs -> [Q, G]` predictions: a plain function,
      `functools.partial(apply, params)` (the arrays among its arguments are
      traced, not compiled in), or a Flax NNX module (see `module_mode`). Must
      be deterministic. The factories' `predict_fn(params, inputs)` is passed
      as `functools.partial(predict_fn, params)`.
    inputs: an array or a pytree of arrays (e.g. ``{"control": ..., "embedding":
      ...}``); must be finite.
    references: `[C, G]` real candidate profiles.
    relevance: `[Q, C]` boolean; default: the identity (`Q == C`).
    key: a `jax.random` key; the same key gives bit-identical results.
    n_null: number of null replicates `B >= 1`.
    randomize: ``"shuffle_features"`` (permute the entries of each input row,
      independently per row and replicate), ``"permute_rows"`` (swap inputs
      between queries), or a callable `(key, inputs) -> inputs` that keeps every
      leaf's shape and dtype.
    leaves: names of the input leaves to randomise (dict keys, attribute names
      or `jax.tree_util.keystr` paths); None: all. Built-in randomisers only.
    metric: similarity metric (see `tb.similarity`).
    own_score: ``"similarity"`` (mean similarity to the relevant candidates,
      SPEC §1), ``"r2"`` or ``"pearson"`` (of the prediction against the mean
      of its relevant references).
    candidate_level: also compute `[Q, C]` entry-wise p-values from streamed
      exceedance counts (costs a `[Q, G] x [G, C]` matmul per replicate).
    chunk_size: replicates per kernel call (one progress-bar step) over all
      devices, rounded up to a multiple of `batch_size` times the device count;
      None: about a tenth of `n_null`.
    batch_size: replicates vmapped together on a device, the unit of working
      memory; None: as many as fit in about 256 MiB on a CPU, or a sixteenth of
      an accelerator's memory (at most 64, at most `B`).
    devices: devices to split replicates over; None: `jax.devices()` (in a
      `jax.distributed` job, those of every process).
    progress: show a progress bar over chunks (on a terminal; in a
      `jax.distributed` job, process 0's only).
    module_mode: for a Flax NNX `predict_fn`: ``"eval"`` (default) runs an
      eval-mode copy (`Module.eval()`: Dropout off, BatchNorm on its running
      averages), the usual way to evaluate; ``"as_is"`` runs the module as it
      is set. In train mode every replicate then uses the Dropout masks of
      the real pass (the module's RNG streams as they stand, so the real and
      the randomised inputs differ only in the input, and a model that ignores
      its input still ties exactly) and BatchNorm normalises each replicate
      with its own batch statistics. Either way the module is not changed: no
      RNG count advances, no running average moves.

  Returns:
    A `NullResult` with `kind="model"`.

  Example:
    >>> import jax, jax.numpy as jnp, twinbench_jax as tb
    >>> x = jax.random.normal(jax.random.key(0), (20, 50))
    >>> res = tb.model_null(lambda v: 2.0 * v, x, 2.0 * x, key=jax.random.key(1),
    ...                     n_null=99, progress=False)
    >>> round(float(res.pvalues.max()), 6)  # 1 / (B + 1): every query uses its input
    0.01
  """
  key = _check_key(key)
  n_null = _check_n_null(n_null)
  _check_options(metric, own_score)
  inputs = _check_inputs(inputs)
  y, rel = _check_references(references, relevance)
  apply, params = _split_predict(predict_fn, module_mode)
  rand_spec = None if leaves is None else tuple([leaves] if isinstance(leaves, str) else leaves)
  randomize_lib.resolve_randomizer(randomize, leaves=rand_spec)  # validates the spec
  rand = _Randomizer(randomize, rand_spec)
  _check_predict_output(apply, params, inputs, y, rel)
  _check_randomizer(rand, key, inputs)

  mesh = sharding.replicate_mesh(devices)
  q, c, g = rel.shape[0], y.shape[0], y.shape[1]
  layout = sharding.chunk_layout(n_null, mesh.size, chunk_size, batch_size,
                                 _bytes_per_replicate(q, c, g, candidate_level, inputs),
                                 batch_bytes=sharding.batch_bytes(mesh.devices.ravel()))
  x_obs = _predict(params, inputs, key, apply=apply, randomize=rand, batch=layout.batch)
  validation.check_no_nan(x_obs, "predict_fn(inputs)")
  x_obs, y, mode, ctx, own_obs, s_obs = _observed(x_obs, y, rel, metric, own_score)
  sharding.check_same_on_processes(
      (key if key.dtype == np.uint32 else jax.random.key_data(key),
       np.array((n_null,) + tuple(layout)), own_obs),
      "`key`, `n_null` or the observed own scores (from `predict_fn`, `inputs`, `references`, "
      "`relevance`)")
  args = sharding.replicated(
      (key, params, inputs, x_obs, own_obs, s_obs if candidate_level else None, ctx), mesh)
  kernel = functools.partial(
      _model_chunk, apply=apply, randomize=rand, mesh=mesh, per_device=layout.per_device,
      batch=layout.batch, metric=metric, mode=mode, candidate_level=candidate_level)
  n_arr = np.int32(n_null)

  def run_chunk(i):
    return kernel(np.int32(i * layout.chunk), n_arr, *args)

  null_own, counts, bad = _stream(layout.n_chunks, run_chunk, progress, "model null")
  if bad:
    raise ValueError(
        f"`predict_fn` returned non-finite predictions (NaN or inf) for {bad} of the {n_null} "
        "randomised inputs; a null replicate must be finite (check the model on inputs "
        "randomised with `randomize`)")
  return _finish("model", own_obs, null_own, counts, s_obs, rel, n_null, metric, own_score)


def precomputed_null(
    predictions: Any,
    null_predictions: Any,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    metric: str = "sqeuclidean",
    own_score: str = "similarity",
    candidate_level: bool = False,
    chunk_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    devices: Optional[Sequence[Any]] = None,
    layer: Optional[str] = None,
    progress: bool = True,
) -> NullResult:
  r"""Permutation null from predictions made elsewhere on randomised inputs (SPEC §3).

  Same p-values as `tb.model_null` (the same kernels score the replicates);
  only the source of the null predictions differs, so any framework (e.g. a
  PyTorch model run `B` times on shuffled inputs) can provide them.

  Args:
    predictions: `[Q, G]` predictions from the real inputs (an array, an
      AnnData object or an ``.h5ad`` path; see `null_predictions`).
    null_predictions: the `B` null replicates, either one array-like of shape
      `[B, Q, G]` (numpy, jax, a `np.memmap` or an h5py dataset: read one chunk
      at a time), or a sequence of `B` items, each a `[Q, G]` array, an AnnData
      object or a path to an ``.h5ad`` file. AnnData rows are taken as they are:
      one row per query, in the order of `predictions` (pseudobulk first, e.g.
      with the profile helpers); `X` or `layers[layer]`, dense or sparse.
    references: `[C, G]` real candidate profiles.
    relevance: `[Q, C]` boolean; default: the identity (`Q == C`).
    metric: similarity metric (see `tb.similarity`).
    own_score: ``"similarity"``, ``"r2"`` or ``"pearson"`` (see `tb.model_null`).
    candidate_level: also compute `[Q, C]` entry-wise p-values (streamed counts).
    chunk_size: replicates loaded and scored per kernel call (see
      `tb.model_null`); None: about a tenth of `n_null`, and at most about 1 GiB
      of replicates in host memory.
    batch_size: replicates vmapped together on a device (see `tb.model_null`).
    devices: devices to split replicates over; None: `jax.devices()`.
    layer: AnnData layer to read instead of `X`.
    progress: show a progress bar over chunks (on a terminal).

  Returns:
    A `NullResult` with `kind="precomputed"`.
  """
  _check_options(metric, own_score)
  x_obs = _load_profile(predictions, "predictions", layer)
  _check_precomputed_order(x_obs, null_predictions, references)
  y, rel = _check_references(references, relevance, n_queries=x_obs.shape[0])
  x_obs = _check_predictions(x_obs, "predictions", y, rel)
  source = _NullSource(null_predictions, (rel.shape[0], y.shape[1]), layer)
  n_null = source.n_null
  x_obs, y, mode, ctx, own_obs, s_obs = _observed(x_obs, y, rel, metric, own_score)

  mesh = sharding.replicate_mesh(devices)
  q, c, g = rel.shape[0], y.shape[0], y.shape[1]
  # The chunk's replicates are held in host memory: at most about `_HOST_CHUNK_BYTES`.
  layout = sharding.chunk_layout(n_null, mesh.size, chunk_size, batch_size,
                                 _bytes_per_replicate(q, c, g, candidate_level, ()),
                                 batch_bytes=sharding.batch_bytes(mesh.devices.ravel()),
                                 max_chunk=max(1, _HOST_CHUNK_BYTES // (4 * q * g)))
  sharding.check_same_on_processes(
      (np.array((n_null,) + tuple(layout)), own_obs),
      "the number of null replicates or the observed own scores (from `predictions`, "
      "`references`, `relevance`)")
  args = sharding.replicated((x_obs, own_obs, s_obs if candidate_level else None, ctx), mesh)
  kernel = functools.partial(
      _precomputed_chunk, mesh=mesh, per_device=layout.per_device, batch=layout.batch,
      metric=metric, mode=mode, candidate_level=candidate_level)
  n_arr = np.int32(n_null)

  def run_chunk(i):
    lo = i * layout.chunk
    hi = min(n_null, lo + layout.chunk)
    xb = np.zeros((layout.chunk, q, g), np.dtype(x_obs.dtype))
    xb[:hi - lo] = source.read(lo, hi)
    return kernel(np.int32(lo), n_arr, sharding.split_replicates(xb, mesh), *args)

  null_own, counts, _ = _stream(layout.n_chunks, run_chunk, progress, "precomputed null")
  return _finish("precomputed", own_obs, null_own, counts, s_obs, rel, n_null, metric,
                 own_score)


def label_null(
    predictions: jax.Array,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    metric: str = "sqeuclidean",
    own_score: str = "similarity",
    candidate_level: bool = False,
) -> NullResult:
  r"""Label-permutation null: the exact no-model default (SPEC §3).

  Is prediction `q` closer to its own truth than the predictions made for the
  other perturbations are? With `m(x_{q'}, t_q)` the own score of prediction
  `q'` against the truth of query `q`,

  .. math::
     p_q = \frac{\#\{q' : m(x_{q'}, t_q) \ge m(x_q, t_q)\}}{Q}, \qquad
     p_{qc} = \frac{\#\{q' : s_{q'c} \ge s_{qc}\}}{Q}

  (`q'` over all queries, `q` included). This is the empirical p-value with the
  other `B = Q - 1` predictions as the null replicates, so the result has the
  same form as the sampled nulls: `n_null = Q - 1` and `null_own_scores[b, q]`
  is the own score of prediction `(q + 1 + b) mod Q` against truth `q`.

  Args:
    predictions: `[Q, G]` predicted profiles (`Q >= 2`).
    references: `[C, G]` real candidate profiles.
    relevance: `[Q, C]` boolean; default: the identity (`Q == C`).
    metric: similarity metric (see `tb.similarity`).
    own_score: ``"similarity"`` (SPEC §1, as `tb.cross_own_scores`), ``"r2"``
      or ``"pearson"``.
    candidate_level: also compute the `[Q, C]` entry-wise p-values above.

  Returns:
    A `NullResult` with `kind="label"`.
  """
  _check_options(metric, own_score)
  x = validation.as_float_array(predictions, "predictions", ndim=2)
  y, rel = _check_references(references, relevance, n_queries=x.shape[0])
  x = _check_predictions(x, "predictions", y, rel)
  if x.shape[0] < 2:
    raise ValueError(f"the label-permutation null needs at least 2 queries, got "
                     f"{x.shape[0]}")
  dtype = jnp.result_type(x.dtype, y.dtype)
  own, null_own, pvalues, s, cand = _label_null(
      x.astype(dtype), y.astype(dtype), rel, metric=metric, own_score=own_score,
      candidate_level=candidate_level)
  return NullResult(own_scores=own, null_own_scores=null_own, pvalues=pvalues, scores=s,
                    relevance=rel, candidate_pvalues=cand, kind="label",
                    n_null=int(x.shape[0]) - 1, metric=metric, own_score=own_score)


@functools.partial(jax.jit, static_argnames=("metric", "own_score", "candidate_level"))
def _label_null(x, y, rel, *, metric, own_score, candidate_level):
  s = similarity_lib._similarity(x, y, metric=metric)
  if own_score == "similarity":
    cross = own_lib._cross(s, rel)
  else:
    truth = jnp.matmul(own_lib._relevance_weights(rel, y.dtype), y, precision=_HIGHEST)
    if own_score == "r2":
      tc = _centred(truth)
      cross = 1.0 - similarity_lib.squared_distances(x, truth) / jnp.sum(tc * tc, axis=1)
    else:
      cross = similarity_lib._similarity(x, truth, metric="pearson")
  q = x.shape[0]
  # Only the own scores and p-values are kept (XLA drops the ranks and the curve).
  scored = label_scoring.label_null_scores(s, cross, rel, k=1, ties="average")
  others = (jnp.arange(q)[None, :] + 1 + jnp.arange(q - 1)[:, None]) % q  # [Q - 1, Q]
  null_own = jnp.take_along_axis(cross, others, axis=0)
  cand = _label_candidate_pvalues(s) if candidate_level else None
  return scored.own_scores, null_own, scored.pvalues, s, cand


def _label_candidate_pvalues(s):
  # Per candidate column: the share of queries whose similarity is >= this one's.
  s = validation.nan_to_neg_inf(s)
  col_sorted = jnp.sort(s, axis=0)
  below = jax.vmap(lambda col, v: jnp.searchsorted(col, v, side="left"),
                   in_axes=(1, 1), out_axes=1)(col_sorted, s)
  return ((s.shape[0] - below) / s.shape[0]).astype(s.dtype)


# --------------------------------------------------------------------------- loading


def _is_anndata(obj: Any) -> bool:
  return any(c.__name__ == "AnnData" for c in type(obj).__mro__)


def _load_profile(item: Any, name: str, layer: Optional[str]) -> Any:
  """An array, an AnnData object (rows as they are) or an ``.h5ad`` path -> `[Q, G]` numpy."""
  if isinstance(item, (str, os.PathLike)):
    if not os.path.isfile(item):
      raise FileNotFoundError(f"`{name}`: no file at {os.fspath(item)!r}")
    import anndata  # imported only when a file is given (a slow import)
    item = anndata.read_h5ad(item)
  if _is_anndata(item):
    if layer is None:
      mat = item.X
    elif layer in item.layers:
      mat = item.layers[layer]
    else:
      raise KeyError(f"`{name}`: could not find layer {layer!r} in `adata.layers`; "
                     f"available: {sorted(item.layers.keys())}")
    item = mat
  if hasattr(item, "toarray"):  # scipy sparse
    item = item.toarray()
  if isinstance(item, jax.Array):
    return item
  return np.asarray(item)


class _NullSource:
  """Reads null replicates `lo .. hi-1` as one `[hi - lo, Q, G]` numpy block, checked."""

  def __init__(self, null_predictions: Any, shape: tuple, layer: Optional[str]):
    self.shape, self.layer = shape, layer
    self.stacked = not isinstance(null_predictions, (list, tuple))
    if self.stacked:
      if isinstance(null_predictions, (str, os.PathLike)) or _is_anndata(null_predictions):
        raise TypeError("`null_predictions` must be a [B, Q, G] array or a sequence of B "
                        "replicates (arrays, AnnData objects or .h5ad paths), got one "
                        f"{type(null_predictions).__name__}")
      if not hasattr(null_predictions, "shape"):
        null_predictions = np.asarray(null_predictions)
      got = tuple(null_predictions.shape)
      if len(got) != 3 or got[1:] != shape:
        raise ValueError(f"`null_predictions` must have shape (B, Q, G) = (B, {shape[0]}, "
                         f"{shape[1]}), got {got}")
      self.n_null = got[0]
    else:
      self.n_null = len(null_predictions)
    if self.n_null < 1:
      raise ValueError("`null_predictions` has zero null replicates (B = 0); need B >= 1")
    self.items = null_predictions

  def read(self, lo: int, hi: int) -> np.ndarray:
    if self.stacked:
      block = np.asarray(self.items[lo:hi])
    else:
      block = np.stack([self._one(i) for i in range(lo, hi)])
    bad = ~np.isfinite(block)
    if bad.any():
      b, q, g = (int(v) for v in np.argwhere(bad)[0])
      raise ValueError(f"`null_predictions` replicate {lo + b} holds non-finite values "
                       f"(NaN or inf), first at query {q}, feature {g}")
    return block

  def _one(self, i: int) -> np.ndarray:
    arr = np.asarray(_load_profile(self.items[i], f"null_predictions[{i}]", self.layer))
    if arr.shape != self.shape:
      raise ValueError(f"`null_predictions[{i}]` must have shape (Q, G) = {self.shape}, got "
                       f"{arr.shape}")
    return arr
