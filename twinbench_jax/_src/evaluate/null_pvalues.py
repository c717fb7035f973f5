"""The null step of `tb.evaluate` (SPEC §3): label, model-in-the-loop or precomputed null.

Query p-values and candidate-level p-values of the model, precomputed null
files read lazily (`LazyNullProfiles`), and each baseline's null (SPEC §6).
"""

from __future__ import annotations

import functools
import os
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.evaluate import context as context_lib
from twinbench_jax._src.evaluate import report as report_lib
from twinbench_jax._src.evaluate import scoring
from twinbench_jax._src.evaluate import settings as settings_lib


def _is_item(x) -> bool:
  """One precomputed null replicate file or AnnData (not an array)."""
  return isinstance(x, (str, os.PathLike)) or hasattr(x, "obs")



class LazyNullProfiles:
  """`[B, Q, G]` precomputed null predictions, made into evaluated profiles on demand.

  The null engine (`tb.precomputed_null`) reads replicates in chunks through
  `shape` and slicing; each slice runs the same pipeline as `adata_pred`
  (pseudobulk per query, normalisation, genes, delta), so only the replicates
  of one file are held at a time.
  """

  def __init__(self, null, ctx: context_lib.Context, n_null: Optional[int]):
    self._ctx = ctx
    nq, ng = len(ctx.queries), len(ctx.genes)
    self._array = self._by_label = None
    self._cache: tuple = (None, None)
    if isinstance(null, Mapping):
      self._by_label = _null_by_label(null, ctx.queries, len(ctx.pred_var_names))
      available = int(self._by_label[0].shape[0])
    elif not _is_item(null) and not (isinstance(null, (list, tuple)) and all(map(_is_item, null))):
      arr = null if hasattr(null, "shape") and hasattr(null, "__getitem__") else np.asarray(null)
      n_pred_genes = len(ctx.pred_var_names)
      if len(arr.shape) != 3 or tuple(arr.shape[1:]) != (nq, n_pred_genes):
        raise ValueError(
            f"null predictions must have shape (B, Q, G) = (B, {nq}, {n_pred_genes}): rows in "
            "query order, the order in which the perturbations first appear in adata_pred (as "
            f"in report.per_perturbation: {profiles_lib._show(ctx.queries, 5)}), and columns "
            f"in the order of adata_pred.var_names; got {tuple(arr.shape)}. A mapping "
            "perturbation label -> [B, G] array needs no order.")
      self._array, available = arr, int(arr.shape[0])
    else:
      self._plan = []  # (item, name, replicate labels or None), one per file
      for i, item in enumerate([null] if _is_item(null) else list(null)):
        self._plan.append(self._inspect(item, i))
      self._offsets = np.cumsum([0] + [len(reps) for _, _, reps in self._plan])
      available = int(self._offsets[-1])
    if n_null is not None and n_null > available:
      raise ValueError(f"`n_null`={n_null} but the precomputed null holds only {available} "
                       "replicate(s)")
    self.shape = (available if n_null is None else int(n_null), nq, ng)

  def _inspect(self, item, i):
    """Checks one replicate file's genes and labels (metadata only)."""
    ctx = self._ctx
    path = isinstance(item, (str, os.PathLike))
    name = os.fspath(item) if path else f"null[{i}]"
    src = profiles_lib.open_source(item, name)
    try:
      profiles_lib.check_unique_genes(src)
      missing = [g for g in ctx.genes if g not in set(src.var_names)]
      if missing:
        raise ValueError(f"null replicate `{name}` lacks {len(missing)} of the evaluated genes: "
                         f"{profiles_lib._show(missing)}")
      labels = src.obs_labels(ctx.pred_key)
      reps = (profiles_lib.factorize(src.obs_labels(ctx.settings.null.replicate_key))[0]
              if ctx.settings.null.replicate_key in src.obs_keys else np.array(["0"]))
      absent = sorted(set(ctx.queries) - set(labels))
      if absent:
        raise ValueError(f"null replicate `{name}` has no prediction for {len(absent)} queried "
                         f"perturbation(s): {profiles_lib._show(absent)}")
    finally:
      if path:
        src.close()
    return item, name, reps

  def _file_profiles(self, i: int) -> np.ndarray:
    """`[R, Q, G]` evaluated profiles of every replicate in file `i` (cached)."""
    if self._cache[0] == i:
      return self._cache[1]
    ctx = self._ctx
    item, name, reps = self._plan[i]
    path = isinstance(item, (str, os.PathLike))
    src = profiles_lib.open_source(item, name)
    try:
      lab_idx = pd.Index(ctx.queries).get_indexer(src.obs_labels(ctx.pred_key))
      rep = (pd.Index(reps).get_indexer(src.obs_labels(ctx.settings.null.replicate_key))
             if len(reps) > 1 or ctx.settings.null.replicate_key in src.obs_keys
             else np.zeros(len(lab_idx), np.int64))
      nq = len(ctx.queries)
      codes = np.where(lab_idx >= 0, rep * nq + lab_idx, -1)
      sums, counts = profiles_lib.group_sums(
          src, codes, len(reps) * nq, layer=ctx.settings.expression.pred_layer,
          normalize=ctx.settings.expression.pred_normalize,
          chunk_size=ctx.settings.expression.chunk_size)
      gidx = src.var_names.get_indexer(ctx.genes)
    finally:
      if path:
        src.close()
    counts = counts.reshape(len(reps), nq)
    empty = np.argwhere(counts == 0)
    if empty.size:
      r, q = empty[0]
      what = f"replicate {reps[r]!r} of " if len(reps) > 1 else ""
      raise ValueError(f"null {what}`{name}` has no prediction for {ctx.queries[q]!r}")
    out = sums[:, gidx].reshape(len(reps), nq, -1) / counts[:, :, None]
    out = ctx.fill_excluded(ctx.transform_pred(out)).astype(scoring.default_float())
    self._cache = (i, out)
    return out

  def _one(self, b: int) -> np.ndarray:
    if self._array is not None or self._by_label is not None:
      rows = (self._array[b] if self._array is not None
              else np.stack([np.asarray(a[b]) for a in self._by_label]))
      x = np.asarray(rows, np.float64)[:, self._ctx.pred_gene_idx]
      return self._ctx.fill_excluded(self._ctx.transform_pred(x)).astype(scoring.default_float())
    i = int(np.searchsorted(self._offsets, b, side="right") - 1)
    return self._file_profiles(i)[b - self._offsets[i]]

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, slice):
      return np.stack([self._one(b) for b in range(*index.indices(self.shape[0]))])
    return self._one(int(index))


def _null_by_label(null: Mapping, queries: Sequence[str], n_genes: int) -> list:
  """The `[B, G]` null predictions of each query, in query order, from a label mapping.

  Labels that are not queries (e.g. the control) are ignored; `G` counts the
  genes of `adata_pred`, in its `var_names` order.
  """
  by_label = {str(label): value for label, value in null.items()}
  missing = [q for q in queries if q not in by_label]
  if missing:
    raise ValueError(f"the `null` mapping has no null predictions for {len(missing)} queried "
                     f"perturbation(s): {profiles_lib._show(missing)}; its keys must be the "
                     f"labels of adata_pred (e.g. {profiles_lib._show(queries, 3)})")
  out = []
  for q in queries:
    value = by_label[q]
    arr = value if hasattr(value, "shape") and hasattr(value, "__getitem__") else np.asarray(value)
    if len(arr.shape) != 2 or arr.shape[1] != n_genes:
      raise ValueError(f"`null`[{q!r}] must have shape (B, G) = (B, {n_genes}): one row per "
                       "null replicate, columns in the order of adata_pred.var_names; got "
                       f"{tuple(arr.shape)}")
    if out and arr.shape[0] != out[0].shape[0]:
      raise ValueError(f"`null`[{q!r}] holds {arr.shape[0]} null replicate(s) but "
                       f"`null`[{queries[0]!r}] holds {out[0].shape[0]}; every perturbation "
                       "needs the same number B")
    if arr.shape[0] == 0:
      raise ValueError(f"`null`[{q!r}] holds 0 null replicates; give at least one")
    out.append(arr)
  return out


def _transformed_call(func, gene_idx, reference, keep, metric, args, kwargs, inputs):
  """`func(*args, inputs, **kwargs)` on the evaluated genes, minus the delta reference.

  With `keep` (`[Q, G]`, target genes excluded) the excluded genes are filled
  as in `context_lib.fill_excluded`.
  """
  out = jnp.asarray(func(*args, inputs, **kwargs))[:, gene_idx]
  out = out if reference is None else out - reference
  return out if keep is None else context_lib.fill_excluded(out, keep, metric, jnp)


def _model_pvalues(null: settings_lib.NullSettings, ctx: context_lib.Context, predictions, *,
                   key, progress, notes, candidate_level=False) -> tuple:
  """The model-in-the-loop null through the null engine (`tb.model_null`, SPEC §3).

  `key` is the null's own key (derived from `null.key` or `null.seed`).
  Returns `(pvalues [Q], n_null, candidate p-values [Q, C] or None)`.
  """
  from twinbench_jax._src.nulls import model as nulls

  gene_idx = jnp.asarray(ctx.pred_gene_idx, jnp.int32)
  ref = (None if ctx.pred_reference is None
         else jnp.asarray(ctx.pred_reference, scoring.default_float()))
  keep = None if ctx.null_keep is None else jnp.asarray(ctx.null_keep)
  predict_fn = null.predict_fn
  # A partial keeps the model's own partial arguments (its parameters) traced, not constants.
  if isinstance(predict_fn, functools.partial):
    predict = functools.partial(_transformed_call, predict_fn.func, gene_idx, ref, keep,
                                ctx.metric, predict_fn.args, predict_fn.keywords or {})
  else:
    predict = functools.partial(_transformed_call, predict_fn, gene_idx, ref, keep, ctx.metric,
                                (), {})
  predictions = ctx.fill_excluded(predictions)
  n_null = 1000 if null.n_null is None else int(null.n_null)
  res = nulls.model_null(predict, null.inputs, ctx.null_references(), ctx.relevance, key=key,
                         n_null=n_null, randomize=null.randomize, metric=ctx.metric,
                         candidate_level=candidate_level, progress=progress)
  observed = np.asarray(predict(null.inputs))
  if observed.shape != predictions.shape or not np.allclose(observed, predictions, rtol=1e-4,
                                                            atol=1e-5):
    notes.append("predict_fn(inputs) does not reproduce the predictions of adata_pred; the "
                 "model null tests predict_fn(inputs)")
  return np.asarray(res.pvalues, np.float64), res.n_null, res.candidate_pvalues


def query_pvalues(null: settings_lib.NullSettings, ctx: context_lib.Context, predictions,
                  model: scoring.Scored, *, key, progress, notes, candidate_level=False) -> tuple:
  """The null step: `(p-values [Q], n_null, candidate p-values [Q, C] or None)` (SPEC §3).

  ``"label"`` keeps the exact label-permutation p-values of the scoring
  kernel (`n_null = Q - 1`: the predictions for the other perturbations);
  ``"model"`` reruns the model on randomised inputs and ``"precomputed"``
  scores given null predictions, both through the null engine (`tb.model_null`,
  `tb.precomputed_null`), which streams replicates in chunks. With
  `candidate_level`, the sampled nulls also count the `[Q, C]` entry-wise
  exceedances; the label null's are made by `candidate_pvalues`. `key`: the
  model null's key.
  """
  if null.kind == "label":
    return model.pvalues, len(model.labels) - 1, None
  if null.kind == "model":
    return _model_pvalues(null, ctx, predictions, key=key, progress=progress, notes=notes,
                          candidate_level=candidate_level)
  from twinbench_jax._src.nulls import precomputed as nulls

  lazy = LazyNullProfiles(null.null, ctx, null.n_null)
  x = np.asarray(ctx.fill_excluded(predictions), scoring.default_float())
  res = nulls.precomputed_null(x, lazy, ctx.null_references(), ctx.relevance, metric=ctx.metric,
                               candidate_level=candidate_level, progress=progress)
  return np.asarray(res.pvalues, np.float64), res.n_null, res.candidate_pvalues



def candidate_pvalues(kind: str, sampled, ctx: context_lib.Context, predictions) -> jax.Array:
  """`[Q, C]` entry-wise p-values `p[q, c]` (SPEC §3) for the candidate-level AUC-F1.

  The sampled nulls counted them while streaming (`sampled`); for the label
  null they are those of `tb.label_null(..., candidate_level=True)`: the share
  of predictions at least as similar to real profile `c` as prediction `q` is.
  """
  if kind != "label":
    return jnp.asarray(sampled)
  from twinbench_jax._src.nulls import label as nulls

  res = nulls.label_null(jnp.asarray(predictions, scoring.default_float()), ctx.references,
                         ctx.relevance,
                         metric=ctx.metric, candidate_level=True)
  return res.candidate_pvalues


def candidate_view(pvalues, ctx: context_lib.Context, direction: str) -> auc_lib.AucF1Result:
  """The candidate-level AUC-F1 curve (SPEC §4) of `[Q, C]` p-values, in the rank direction.

  ``"pred_to_real"``: query `q` retrieves the real profiles `c` with
  `p[q, c] <= α`. ``"real_to_pred"``: the real profile of query `j` retrieves
  the predictions `i` with `p[i, truth_j] <= α`. An entry's p-value belongs to
  the pair, so the two directions group the same pairs by a different side.
  """
  p, rel = jnp.asarray(pvalues), ctx.relevance
  if direction == "real_to_pred":
    p = p[:, ctx.truth].T
    rel = jnp.arange(p.shape[1])[None, :] == jnp.arange(p.shape[0])[:, None]
  return report_lib.curve_to_numpy(auc_lib.candidate_auc_f1(p, rel))


def baseline_null(scored: scoring.Scored, name: str, null_kind: str, n_null: int, k: int) -> tuple:
  """`(scored, null kind, n_null)` of a baseline under the model's null kind (SPEC §6).

  The mean and control baselines predict one profile whatever their input
  (`Baseline.input_agnostic`), so rerunning them on randomised inputs gives
  the same profile: every replicate ties, and their p-values under a model or
  precomputed null are 1 by construction (SPEC §3), which is set directly.
  The split-half baseline has no model to rerun and no null predictions: it
  keeps the label null.
  """
  if null_kind == "label" or not baselines_lib.REGISTRY[name].input_agnostic:
    return scored, "label", len(scored.labels) - 1
  return scored.with_pvalues(np.ones(len(scored.labels)), k), null_kind, n_null


def baseline_null_note(null_kind: str, names) -> list[str]:
  """The notes on the baselines `names` scored under a model or precomputed null."""
  if null_kind == "label" or not names:
    return []
  notes = []
  agnostic = [baselines_lib.REGISTRY[name].input_agnostic for name in names]
  if any(agnostic):
    notes.append(f"the mean and control baselines ignore their input: under the {null_kind} "
                 "null every replicate ties with them, so their p-values are 1 and their "
                 "AUC-F1 is 0 by construction")
  if not all(agnostic):
    notes.append("the split-half baseline is scored with the label null: it has no model to "
                 f"rerun on randomised inputs and no null predictions for a {null_kind} null")
  return notes
