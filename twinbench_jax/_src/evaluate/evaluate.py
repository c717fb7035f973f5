"""End-to-end evaluation of predicted against real AnnData: `tb.evaluate` (SPEC §4, §6–8).

Orchestration only: profiles come from `profiles`, baselines from
`baselines`, every number from the array core. The steps:

1. pseudobulk profiles of both files (streamed; optional per-cell
   normalisation), aligned on shared genes and perturbation labels;
2. optional deltas to a reference and a gene subset;
3. similarities, truth ranks and own scores of the model's predictions
   (`scoring`);
4. the null step (`null_pvalues.query_pvalues`): the exact label-permutation
   null, a model-in-the-loop null, or precomputed null predictions;
5. the same for each calibration baseline (`null_pvalues.baseline_null`: the
   label null, or p = 1 by construction for the input-agnostic ones under a
   sampled null);
6. a frozen `Report` (`report`).
"""

from __future__ import annotations

import os
import types
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from twinbench_jax._src import version
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.evaluate import checks
from twinbench_jax._src.evaluate import context as context_lib
from twinbench_jax._src.evaluate import null_pvalues
from twinbench_jax._src.evaluate import report as report_lib
from twinbench_jax._src.evaluate import scoring
from twinbench_jax._src.evaluate import target_genes as targets_lib

# Re-exported: the package and older imports read them from here.
Report = report_lib.Report
ALPHA = scoring.ALPHA
DELTAS = checks.DELTAS
DIRECTIONS = checks.DIRECTIONS


def _split_seed(key: Optional[jax.Array], seed: int) -> int:
  """Seed of the split halves: `seed`, or derived from the bits of `key` (no device work)."""
  if key is None:
    return int(seed)
  data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                    else key).ravel()
  return int(np.random.SeedSequence([int(v) for v in data] + [1]).generate_state(1)[0])



def evaluate(
    adata_pred: Any,
    adata_real: Any,
    *,
    perturbation_key: Optional[str] = None,
    pred_perturbation_key: Optional[str] = None,
    control: Any = None,
    include_control: bool = False,
    layer: Optional[str] = None,
    pred_layer: Optional[str] = None,
    normalize: Optional[str] = None,
    pred_normalize: Optional[str] = None,
    genes: Optional[Sequence[str]] = None,
    n_top_genes: Optional[int] = None,
    strict_genes: bool = False,
    target_genes: Any = None,
    delta: Any = False,
    unmatched: str = "error",
    metric: str = "sqeuclidean",
    k: int = 1,
    ties: str = "average",
    null: Any = "label",
    n_null: Optional[int] = None,
    predict_fn: Optional[Callable] = None,
    inputs: Any = None,
    randomize: Any = "shuffle_features",
    null_replicate_key: str = "null_replicate",
    key: Optional[jax.Array] = None,
    seed: int = 0,
    baselines: Sequence[str] = baselines_lib.BASELINES,
    chunk_size: Optional[int] = None,
    progress: bool = False,
    name: str = "model",
    direction: str = "pred_to_real",
    candidate_level: bool = False,
) -> Report:
  """Scores predicted against real perturbation profiles, with baselines (SPEC §4, §6–8).

  Each predicted perturbation (pseudobulk of `adata_pred`) is a query; the
  real perturbation profiles (pseudobulks of `adata_real`) are the candidates.
  The report gives the rank of the truth, a p-value per query, the AUC-F1,
  and the same for the calibration baselines computed from `adata_real`.

  On a CPU the two loops that dominate, the per-perturbation sums of the
  cells and (``metric="l1"``) the all-pairs distances, run as compiled loops
  on every core (numba, compiled once and cached); the environment variable
  ``TWINBENCH_NUMBA=0`` turns them off, for the same numbers from numpy,
  scipy and XLA (the sums bit for bit, the distances up to float rounding).

  Args:
    adata_pred: predictions: an AnnData (in memory or backed) or an `.h5ad`
      path; one row per perturbation or many cells per perturbation (averaged).
    adata_real: the real data, same forms. Paths are opened read-only and
      streamed, so a file larger than memory works.
    perturbation_key: `obs` column of the perturbation label; default
      `adata_real.uns['perturbation_key']`, else ``"perturbation"``.
    pred_perturbation_key: the column in `adata_pred` (default: the same).
    control: the control label; default `adata_real.uns['control_label']`,
      else ``"control"``. ``False``: the data has no control cells (no control
      baseline, no control delta). The control is never a query or a
      candidate unless `include_control`.
    include_control: rank the control like a perturbation.
    layer: layer to read instead of `X` (both files).
    pred_layer: layer of `adata_pred` when it differs (``"X"`` for `X`).
    normalize: per-cell normalisation before averaging: `None` (default: both
      files are taken to be in the same expression space as stored),
      ``"log1p"``, ``"log1p_cp10k"`` (log1p of counts per 10,000; for raw
      counts) or ``"log1p_cpm"`` (per million). A file whose first cells hold
      non-integer values is not raw counts: the report then carries a note
      (values already log-normalised would be normalised twice).
    pred_normalize: normalisation of `adata_pred` when it differs
      (``"none"`` for none); default: `normalize`.
    genes: evaluate on these genes only (all must be shared).
    n_top_genes: evaluate on the N genes whose real profiles vary most across
      perturbations (after normalisation).
    strict_genes: error when the files' gene sets differ (default: use the
      shared genes, with a note).
    target_genes: leave each perturbation's own target gene(s) out of its
      comparisons (SPEC §7: a knockout trivially lowers its target, which says
      nothing about the rest of the response). Either a mapping perturbation
      label -> gene name or list of gene names, or the name of an `obs`
      column of `adata_real` holding each cell's target gene (e.g.
      ``"grna_target"``, or the perturbation column itself when labels are
      gene symbols; ``"obs:COLUMN"`` works too). Query `q`'s similarities to
      every candidate, and the own scores against its truth in the null, are
      computed without `q`'s targets (`tb.similarity(..., exclude=...)`); the
      model and every baseline are treated the same. Target genes outside the
      evaluated genes are ignored (with a note); a mapping label that is in
      neither file is an error. Default: no exclusion.
    delta: compare changes instead of levels: `False`/``"none"``;
      ``"control"`` (or `True`): both files minus the *real* control profile;
      ``"pred_control"``: predictions minus the prediction file's own control
      (opt-in: a prediction file could move its score through its control);
      ``"mean"``: both minus the mean real perturbation profile. A shared
      reference changes nothing for Euclidean and L1 distances.
    unmatched: perturbations on one side only: ``"error"`` (default),
      ``"intersect"`` (score the shared ones), or ``"keep_real"`` (score the
      shared ones; unpredicted real ones remain candidates).
    metric: similarity (``"sqeuclidean"``, ``"euclidean"``, ``"l1"``,
      ``"cosine"``, ``"pearson"``).
    k: a query is correct when its truth ranks within the top `k`; must be
      below the number of candidates (with `k >= C` every query is correct).
    ties: tie rule of the ranks (``"average"``, ``"optimistic"``, ``"pessimistic"``).
    null: ``"label"`` (exact label permutation, no model needed),
      ``"model"`` (rerun `predict_fn` on randomised `inputs`), or precomputed
      null predictions: a mapping perturbation label -> `[B, G]` array (no
      order to get wrong; labels that are not queries are ignored), a
      `[B, Q, G]` array (rows in query order: as the perturbations first
      appear in `adata_pred`, the order of `report.per_perturbation`; columns
      in `adata_pred.var_names` order), or an AnnData/`.h5ad` path or a list
      of them shaped like `adata_pred` (cells matched by their labels), one
      replicate each (or several, labelled by `obs[null_replicate_key]`).
    n_null: null replicates: the model null's B (default 1000); for
      precomputed nulls the first `n_null` replicates (default all). Not used
      by the label null.
    predict_fn: for ``null="model"``: `inputs -> [Q, G]` profiles in query
      order and `adata_pred.var_names` order, in the evaluated expression space.
    inputs: the model inputs (a pytree) for ``null="model"``.
    randomize: randomiser of the model null (see `tb.resolve_randomizer`).
    null_replicate_key: `obs` column that splits a null file into replicates.
    key: PRNG key for the model null and the split halves; default
      `jax.random.key(seed)`.
    seed: used when `key` is None.
    baselines: any of ``"mean"``, ``"control"``, ``"split_half"`` (SPEC §6).
      Under the label null all are scored with it; under a model or
      precomputed null the mean and control baselines, which ignore their
      input, get p = 1 by construction (every replicate ties), and the
      split-half, which has no model to rerun, keeps the label null (with a
      note; ``summary["baseline_details"][name]["null"]`` says which).
      Perturbations with fewer than 2 real cells are left out of the
      split-half (with a note).
    chunk_size: cells read at a time (default: about 4 million entries).
    progress: show progress bars while reading.
    name: what to call the predictions in the report and its plots.
    direction: the rank direction (SPEC §2). ``"pred_to_real"`` (default):
      each prediction ranks the real perturbation profiles, the truth's rank
      is reported. ``"real_to_pred"`` (PerturBench's direction): each real
      perturbation that has a prediction ranks the predictions, its own
      prediction's rank is reported (its target genes excluded under
      `target_genes`); `top1` and `popularity` then name predictions. The
      p-values are the same in both directions (an own score is one pair);
      only the ranks, and so what counts as correct, change.
    candidate_level: also report the candidate-level AUC-F1 (SPEC §4) of the
      entry-wise p-values `p[q, c]` in ``summary["candidate_auc_f1"]`` and
      `Report.candidate_curve`. Sampled nulls (model, precomputed) count them
      while streaming (costing a `[Q, G] x [G, C]` product per replicate); the
      label null uses those of `tb.label_null(..., candidate_level=True)`
      (refused with `target_genes`, whose per-query genes make an entry's
      null incomparable).

  Returns:
    A `Report`. Queries (rows of `per_perturbation`) come in the order the
    perturbations first appear in `adata_pred`; candidates are sorted.

  Raises:
    ValueError: naming the file, key or option, for unreadable or corrupt
      data (0 cells, non-finite values, corrupt sparse row pointers or
      categorical codes) and for settings under which the numbers would mean
      nothing: fewer than 2 candidates, a single query under the label null,
      `k >= C`, target genes that leave a perturbation no gene, or profiles
      so large that the distances overflow the float type.

  Example:
    >>> report = tb.evaluate("pred.h5ad", "real.h5ad", normalize="log1p_cp10k")
    >>> report.auc_f1, report.baselines
    >>> report.save("out/")
  """
  # --- arguments, checked before any data is read.
  if metric not in similarity_lib.METRICS:
    raise ValueError(f"unknown `metric` {metric!r}; choose one of {similarity_lib.METRICS}")
  if ties not in ranking.TIES:
    raise ValueError(f"unknown `ties` {ties!r}; choose one of {ranking.TIES}")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`k` must be an integer >= 1, got {k!r}")
  seed = baselines_lib.check_seed(seed)
  norm_real = profiles_lib.check_normalize(normalize)
  norm_pred = (norm_real if pred_normalize is None
               else profiles_lib.check_normalize(pred_normalize, "pred_normalize"))
  delta = checks.check_delta(delta)
  wanted = baselines_lib.check_baselines(baselines)
  null_kind = checks.check_null(null, n_null, predict_fn)
  if genes is not None and n_top_genes is not None:
    raise ValueError("give either `genes` or `n_top_genes`, not both")
  if isinstance(genes, str):  # iterating would give its letters
    raise TypeError(f"`genes` must be a list of gene names, got the string {genes!r}; pass "
                    f"[{genes!r}] for one gene")
  if n_top_genes is not None and (isinstance(n_top_genes, bool) or not isinstance(
      n_top_genes, (int, np.integer)) or n_top_genes < 1):
    raise ValueError(f"`n_top_genes` must be an integer >= 1, got {n_top_genes!r}")
  if unmatched not in profiles_lib.UNMATCHED:
    raise ValueError(f"unknown `unmatched` {unmatched!r}; choose one of {profiles_lib.UNMATCHED}")
  target_spec = targets_lib.check_target_genes(target_genes)
  direction = checks.check_direction(direction)
  candidate_level = checks.check_candidate_level(candidate_level, null_kind, target_spec)
  notes: list[str] = []

  owned = []
  try:
    real = profiles_lib.open_source(adata_real, "adata_real")
    if isinstance(adata_real, (str, os.PathLike)):
      owned.append(real)
    pred = profiles_lib.open_source(adata_pred, "adata_pred")
    if isinstance(adata_pred, (str, os.PathLike)):
      owned.append(pred)
    real.check_has_cells()
    pred.check_has_cells()
    pred_layer = layer if pred_layer is None else (None if pred_layer == "X" else pred_layer)
    notes += checks.normalize_notes(real, layer, norm_real, "normalize", pred=False)
    notes += checks.normalize_notes(pred, pred_layer, norm_pred,
                              "normalize" if pred_normalize is None else "pred_normalize",
                              pred=True)
    report = _evaluate(
        pred, real, perturbation_key=perturbation_key, pred_perturbation_key=pred_perturbation_key,
        control=control, include_control=include_control, layer=layer,
        pred_layer=pred_layer, norm_real=norm_real, norm_pred=norm_pred, genes=genes,
        n_top_genes=n_top_genes, strict_genes=strict_genes, target_spec=target_spec, delta=delta,
        unmatched=unmatched,
        metric=metric, k=int(k), ties=ties, null=null, null_kind=null_kind, n_null=n_null,
        predict_fn=predict_fn, inputs=inputs, randomize=randomize,
        null_replicate_key=null_replicate_key, key=key, seed=seed, baselines=wanted,
        chunk_size=chunk_size, progress=progress, model_name=str(name), notes=notes,
        direction=direction, candidate_level=candidate_level)
  finally:
    for src in owned:
      src.close()
  return report



def _columns(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """`a[:, idx]`, without the copy when `idx` takes every column in order (the usual case)."""
  if idx.shape[0] == a.shape[1] and np.array_equal(idx, np.arange(a.shape[1])):
    return a
  return a[:, idx]



def _evaluate(pred, real, *, perturbation_key, pred_perturbation_key, control, include_control,
              layer, pred_layer, norm_real, norm_pred, genes, n_top_genes, strict_genes,
              target_spec, delta, unmatched, metric, k, ties, null, null_kind, n_null, predict_fn,
              inputs, randomize, null_replicate_key, key, seed, baselines, chunk_size, progress,
              model_name, notes, direction="pred_to_real", candidate_level=False) -> Report:
  # --- keys, labels, genes.
  real_key, control = profiles_lib.resolve_keys(real, perturbation_key, control)
  pred_key = pred_perturbation_key or real_key
  profiles_lib.check_unique_genes(pred)
  profiles_lib.check_unique_genes(real)
  shared, gene_notes = profiles_lib.align_genes(pred.var_names, real.var_names,
                                                strict=strict_genes, pred_name=pred.name,
                                                real_name=real.name)
  notes += gene_notes
  if genes is not None:
    genes = [str(g) for g in genes]
    if not genes:
      raise ValueError("`genes` is empty; pass None to use all shared genes")
    missing = [g for g in genes if g not in set(shared)]
    if missing:
      raise ValueError(f"{len(missing)} requested gene(s) are not in both files: "
                       f"{profiles_lib._show(missing)}")
    if len(set(genes)) != len(genes):
      raise ValueError("`genes` lists a gene more than once")
    shared = np.asarray(genes)
  real_labels = real.obs_codes(real_key)
  pred_labels = pred.obs_codes(pred_key)
  real_uniq = real_labels.sorted_unique()
  pred_uniq = pred_labels.in_order_of_appearance()
  if control is not None and control not in set(real_uniq):
    raise ValueError(
        f"control label {control!r} not found in {real.where(f'obs[{real_key!r}]')} (labels: "
        f"{profiles_lib._show(real_uniq.tolist())}); pass the control label as `control` "
        "(CLI: --control), or control=False (--no-control) if the data has no control cells.")
  if control is None:
    if delta == "control" or delta == "pred_control":
      raise ValueError(f"delta={delta!r} needs control cells, but control=False")
    if "control" in baselines:
      baselines = tuple(b for b in baselines if b != "control")
      notes.append("no control: the control baseline is skipped")
  if delta == "pred_control" and control not in set(pred_uniq):
    raise ValueError(f"delta='pred_control' needs control cells labelled {control!r} in "
                     f"{pred.where(f'obs[{pred_key!r}]')}; found none. Use delta='control' to "
                     "subtract the real control from both files.")

  def drop_control(labels):
    return [x for x in labels.tolist() if include_control or x != control]

  queries, candidates, label_notes = profiles_lib.align_perturbations(
      drop_control(pred_uniq), drop_control(real_uniq), unmatched=unmatched,
      pred_name=pred.name, real_name=real.name)
  notes += label_notes
  checks.check_sizes(queries, candidates, k, null_kind)
  target_map = targets_lib.target_map(target_spec, real, real_key, real_labels, pred, pred_key,
                           set(real_uniq) | set(pred_uniq))

  # --- one streamed pass per file.
  real_groups = list(candidates) + ([control] if control is not None and control not in
                                    candidates else [])
  real_idx = real_labels.index_in(real_groups)
  half = baselines_lib.split_halves(real_idx, seed=_split_seed(key, seed))
  real_codes = np.where(real_idx >= 0, 2 * real_idx + half, -1)
  sums, counts = profiles_lib.group_sums(real, real_codes, 2 * len(real_groups), layer=layer,
                                         normalize=norm_real, chunk_size=chunk_size,
                                         progress=progress, desc="real cells")
  real_gidx = real.var_names.get_indexer(shared)
  sums = _columns(sums, real_gidx)
  n_real = counts[0::2] + counts[1::2]
  real_full = sums[0::2] + sums[1::2]
  real_full /= n_real[:, None]
  pred_groups = list(queries) + ([control] if delta == "pred_control" else [])
  pred_idx = pred_labels.index_in(pred_groups)
  psums, pcounts = profiles_lib.group_sums(pred, pred_idx, len(pred_groups), layer=pred_layer,
                                           normalize=norm_pred, chunk_size=chunk_size,
                                           progress=progress, desc="predictions")
  pred_gidx = pred.var_names.get_indexer(shared)
  pred_full = _columns(psums, pred_gidx) / pcounts[:, None]

  n_cand = len(candidates)
  cand_profiles = real_full[:n_cand]
  if n_top_genes is not None:
    if n_top_genes >= len(shared):
      notes.append(f"n_top_genes={n_top_genes} >= {len(shared)} shared genes: all are used")
    else:
      top = profiles_lib.top_variable_genes(cand_profiles, shared, n_top_genes)
      keep = pd.Index(shared).get_indexer(top)
      shared, sums = top, sums[:, keep]
      real_full, pred_full = real_full[:, keep], pred_full[:, keep]
      real_gidx, pred_gidx = real_gidx[keep], pred_gidx[keep]
      cand_profiles = real_full[:n_cand]
      notes.append(f"{n_top_genes} most variable genes across the real profiles")
  control_real = real_full[real_groups.index(control)] if control is not None else None
  targets = (None if target_map is None else
             targets_lib.Targets.build(target_map, queries, candidates, shared, notes))

  # --- deltas (SPEC §7: the real control is the default reference for both files).
  real_ref = pred_ref = None
  if delta == "control":
    real_ref = pred_ref = control_real
  elif delta == "pred_control":
    real_ref, pred_ref = control_real, pred_full[len(queries)]
  elif delta == "mean":
    real_ref = pred_ref = baselines_lib.mean_profile(cand_profiles)
  references = jnp.asarray(cand_profiles if real_ref is None else cand_profiles - real_ref,
                           scoring.default_float())
  truth = pd.Index(candidates).get_indexer(queries)
  rel = jnp.asarray(np.arange(len(candidates))[None, :] == truth[:, None])
  ctx = context_lib.Context(
      queries=list(queries), candidates=list(candidates), genes=np.asarray(shared),
      pred_var_names=pred.var_names, pred_gene_idx=pred_gidx, pred_key=pred_key,
      pred_layer=pred_layer, pred_normalize=norm_pred, pred_reference=pred_ref,
      real_reference=real_ref, references=references, truth=jnp.asarray(truth, jnp.int32),
      relevance=rel, metric=metric, chunk_size=chunk_size,
      null_replicate_key=null_replicate_key,
      targets=targets)
  q_exclude = None if targets is None else targets.index(queries)
  predictions = ctx.transform_pred(pred_full[:len(queries)])
  checks.check_magnitude(predictions, checks.named(pred), metric)
  checks.check_magnitude(ctx.transform_real(real_full), checks.named(real), metric)
  cand_n = n_real[:n_cand]
  query_n_real = cand_n[pd.Index(candidates).get_indexer(queries)]
  baseline_tables: dict[str, pd.DataFrame] = {}

  # --- the model.
  n_q = len(queries)
  model = scoring.score(queries, predictions, references, truth, np.arange(n_q), metric=metric, k=k,
                 ties=ties, exclude=q_exclude, direction=direction)
  # What the ranks are over: the real candidates, or (real_to_pred) the predictions.
  ranked = queries if direction == "real_to_pred" else candidates
  if direction == "real_to_pred" and n_cand > n_q:
    notes.append(f"real_to_pred: the {n_cand - n_q} real perturbation(s) without a prediction "
                 "have no own prediction to rank and are not scored")
  if null_kind == "model":
    null_key = jax.random.fold_in(jax.random.key(seed) if key is None else key, 2)
  else:
    null_key = None
  pvals, b, cand_p = null_pvalues.query_pvalues(null_kind, null, ctx, predictions, model, n_null=n_null,
                                    predict_fn=predict_fn, inputs=inputs, key=null_key,
                                    randomize=randomize, progress=progress, notes=notes,
                                    candidate_level=candidate_level)
  cand_curve = (null_pvalues.candidate_view(null_pvalues.candidate_pvalues(null_kind, cand_p, ctx, predictions), ctx,
                                direction) if candidate_level else None)
  if null_kind == "label":
    notes.append(f"label null: exact, over the {n_q} predictions (n_null = Q - 1)")
    if n_null is not None:
      notes.append(f"n_null={n_null} is not used by the exact label null")
  else:
    model = model.with_pvalues(pvals, k)

  # --- baselines (the model's null kind where it has a meaning: `null_pvalues.baseline_null`).
  scored, baseline_null = {}, {}
  if n_q < 2 and any(name != "split_half" for name in baselines):
    notes.append("the mean and control baselines are skipped: their label null needs at least "
                 "2 queries")
    baselines = tuple(name for name in baselines if name == "split_half")
  for name in baselines:
    if name in ("mean", "control"):
      profile = (baselines_lib.mean_profile(cand_profiles) if name == "mean" else control_real)
      x = scoring.one_profile_rows(ctx.transform_real(profile), n_q, len(candidates),
                            host_l1=scoring.uses_host_l1(metric, q_exclude))
      n_pred = int(cand_n.sum()) if name == "mean" else int(n_real[real_groups.index(control)])
      scored[name] = scoring.score(queries, x, references, truth, np.zeros(n_q), metric=metric, k=k,
                            ties=ties, exclude=q_exclude, direction=direction)
      scored[name], *baseline_null[name] = null_pvalues.baseline_null(scored[name], name, null_kind, b, k)
      baseline_tables[name] = scored[name].table(ranked, k, np.full(n_q, n_pred),
                                                 query_n_real)
    elif name == "split_half":
      n_a, n_b = counts[0::2][:n_cand], counts[1::2][:n_cand]
      ok = n_a > 0
      if ok.sum() < 2:  # its label null needs 2 queries
        notes.append(f"split-half skipped: {int(ok.sum())} perturbation(s) have 2 or more real "
                     "cells, and it needs at least 2")
        continue
      if not ok.all():
        left = [c for c, o in zip(candidates, ok) if not o]
        notes.append(f"split-half leaves out {len(left)} perturbation(s) with fewer than 2 real "
                     f"cells: {profiles_lib._show(left, 5)}")
      half_a = sums[0::2][:n_cand][ok] / n_a[ok, None]
      half_b = sums[1::2][:n_cand] / n_b[:, None]
      checks.check_magnitude(ctx.transform_real(np.concatenate([half_a, half_b])), checks.named(real), metric)
      sh_q = np.asarray(candidates)[ok]
      scored[name] = scoring.score(sh_q, ctx.transform_real(half_a), ctx.transform_real(half_b),
                            np.flatnonzero(ok), np.arange(len(sh_q)), metric=metric, k=k,
                            ties=ties, exclude=None if targets is None else targets.index(sh_q),
                            direction=direction)
      scored[name], *baseline_null[name] = null_pvalues.baseline_null(scored[name], name, null_kind, b, k)
      baseline_tables[name] = scored[name].table(
          sh_q if direction == "real_to_pred" else candidates, k, n_a[ok], n_b[ok])
  notes += null_pvalues.baseline_null_note(null_kind, tuple(scored))

  # --- report.
  table = model.table(ranked, k, pcounts[:n_q], query_n_real)
  for t in (table, *baseline_tables.values()):
    if targets is not None:
      t["excluded_genes"] = targets.names(t["perturbation"])
    t["direction"] = direction  # the CSV says what each rank is among
  popularity = pd.DataFrame({"perturbation": ranked, "n_cells": (
      pcounts[:n_q] if direction == "real_to_pred" else cand_n), "top1_count": model.popularity})
  stats = model.stats(k, b)

  summary = {
      "twinbench_version": version.__version__,
      "metric_version": version.METRIC_VERSION,
      **stats,
      "k": k,
      "normalized_rank": float(np.mean((model.ranks - 1.0) / np.maximum(
          len(ranked) - 1 if direction == "real_to_pred" else np.sum(~np.asarray(rel), axis=1),
          1))),
      "null": null_kind,
      "alpha": scoring.ALPHA,
      "n_candidates": len(ranked),
      "n_genes": int(len(shared)),
      "popularity_gini": model.gini,
      "data_fingerprint": report_lib.data_fingerprint(shared, candidates, cand_n),
      "baselines": {name: float(sc.curve.auc) for name, sc in scored.items()},
      "baseline_details": {name: {**sc.stats(k, baseline_null[name][1]),
                                  "null": baseline_null[name][0]}
                           for name, sc in scored.items()},
      **({"candidate_auc_f1": float(cand_curve.auc)} if candidate_level else {}),
      "settings": {
          "perturbation_key": real_key, "pred_perturbation_key": pred_key, "control": control,
          "include_control": include_control, "layer": layer, "pred_layer": pred_layer,
          "normalize": norm_real, "pred_normalize": norm_pred,
          "genes": "given" if genes is not None else (
              f"top {n_top_genes} variable" if n_top_genes is not None else "all shared"),
          "target_genes": targets_lib.describe_target_spec(target_spec),
          "delta": delta, "unmatched": unmatched, "metric": metric, "ties": ties,
          "seed": seed, "pred": pred.name, "real": real.name, "name": model_name,
          "direction": direction,
      },
      "notes": list(notes),
  }
  return Report(
      summary=types.MappingProxyType(report_lib.json_safe(summary)),
      per_perturbation=table,
      curves=types.MappingProxyType(
          {"model": model.curve, **{name: sc.curve for name, sc in scored.items()}}),
      baseline_tables=types.MappingProxyType(baseline_tables),
      popularity=popularity,
      genes=tuple(str(g) for g in shared),
      candidate_curve=cand_curve,
  )
