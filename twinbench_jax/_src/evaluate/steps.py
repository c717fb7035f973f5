"""The steps of `tb.evaluate`, each driven by one checked `settings.Settings`.

resolve labels -> read profiles -> genes -> delta -> score model -> score
baselines -> build report; `run` opens the two files and calls them in order.
"""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from twinbench_jax._src import version
from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.data import profiles as profiles_lib
from twinbench_jax._src.evaluate import checks
from twinbench_jax._src.evaluate import context as context_lib
from twinbench_jax._src.evaluate import null_pvalues
from twinbench_jax._src.evaluate import report as report_lib
from twinbench_jax._src.evaluate import scoring
from twinbench_jax._src.evaluate import settings as settings_lib
from twinbench_jax._src.evaluate import target_genes as targets_lib

Settings = settings_lib.Settings


@dataclasses.dataclass(frozen=True)
class Labels:
  """The labels of both files, resolved and aligned (`resolve_labels`).

  Attributes:
    real_key, pred_key: the `obs` columns of the labels in each file.
    control: the control label, or None (no control cells).
    real, pred: the `profiles.Labels` of each file's cells.
    queries: the predicted perturbations scored, in order of first appearance.
    candidates: the real perturbations ranked against, sorted.
    target_map: label -> target gene names, or None.
    baselines: the baselines to score (without ``"control"`` when there is none).
  """

  real_key: str
  pred_key: str
  control: Optional[str]
  real: Any
  pred: Any
  queries: list
  candidates: list
  target_map: Optional[dict]
  baselines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Profiles:
  """Pseudobulk profiles of both files on the evaluated genes (`read_profiles`).

  Attributes:
    genes: `[G]` the evaluated gene names.
    real_groups: the real labels averaged: the candidates, then the control
      when it is not one of them.
    half_sums: `[2 R, G]` sums of the split halves of each real group (rows
      `2 r` and `2 r + 1`).
    half_counts: `[2 R]` their cell counts.
    real: `[R, G]` mean profile of each real group.
    n_real: `[R]` cells of each real group.
    pred: `[P, G]` mean prediction of each query, then (``delta="pred_control"``)
      the prediction file's control.
    n_pred: `[P]` rows averaged into each.
    pred_gene_idx: `[G]` columns of the evaluated genes in `adata_pred`.
  """

  genes: Any
  real_groups: list
  half_sums: np.ndarray
  half_counts: np.ndarray
  real: np.ndarray
  n_real: np.ndarray
  pred: np.ndarray
  n_pred: np.ndarray
  pred_gene_idx: np.ndarray

  def subset(self, genes, keep: np.ndarray) -> "Profiles":
    """The same profiles on `genes`, the columns `keep` of the current ones."""
    return dataclasses.replace(self, genes=genes, half_sums=self.half_sums[:, keep],
                               real=self.real[:, keep], pred=self.pred[:, keep],
                               pred_gene_idx=self.pred_gene_idx[keep])


@dataclasses.dataclass(frozen=True)
class ScoredModel:
  """The model's scores (`score_model`): p-values from its null, `n_null` replicates."""

  scored: scoring.Scored
  n_null: int
  candidate_curve: Optional[auc_lib.AucF1Result]


@dataclasses.dataclass(frozen=True)
class ScoredBaseline:
  """One baseline's scores (`score_baselines`), under `null` with `n_null` replicates."""

  scored: scoring.Scored
  null: str
  n_null: int
  table: pd.DataFrame


def run(adata_pred: Any, adata_real: Any, settings: Settings) -> report_lib.Report:
  """Evaluates `adata_pred` against `adata_real` under checked `settings` (`settings.build`).

  Opens both (a path is closed again on the way out), then runs the steps.
  """
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
    e = settings.expression
    notes += checks.normalize_notes(real, e.layer, e.normalize, "normalize", pred=False)
    notes += checks.normalize_notes(pred, e.pred_layer, e.pred_normalize,
                                    e.pred_normalize_option, pred=True)
    return _run_steps(pred, real, settings, notes)
  finally:
    for src in owned:
      src.close()


def _run_steps(pred, real, settings: Settings, notes: list) -> report_lib.Report:
  """The steps in order, on open sources; `notes` collects the report's notes."""
  keys = resolve_keys(real, settings.labels)
  genes = shared_genes(pred, real, settings.genes, notes)
  labels = resolve_labels(pred, real, keys, settings, notes)
  profiles = read_profiles(pred, real, labels, genes, settings)
  profiles, targets = select_genes(profiles, labels, settings, notes)
  ctx, predictions = apply_delta(pred, real, profiles, labels, targets, settings)
  model = score_model(ctx, predictions, labels, settings, notes)
  baselines = score_baselines(real, ctx, profiles, labels, settings, model.n_null, notes)
  return build_report(pred, real, ctx, profiles, labels, settings, model, baselines, notes)


def resolve_keys(real, labels: settings_lib.LabelSettings) -> tuple[str, str, Optional[str]]:
  """`(real label column, predicted label column, control or None)`, `uns` defaults applied."""
  real_key, control = profiles_lib.resolve_keys(real, labels.perturbation_key, labels.control)
  return real_key, labels.pred_perturbation_key or real_key, control


def shared_genes(pred, real, genes: settings_lib.GeneSettings, notes: list) -> np.ndarray:
  """The genes both files hold (in the real file's order), or the given ones."""
  profiles_lib.check_unique_genes(pred)
  profiles_lib.check_unique_genes(real)
  shared, gene_notes = profiles_lib.align_genes(pred.var_names, real.var_names,
                                                strict=genes.strict_genes, pred_name=pred.name,
                                                real_name=real.name)
  notes += gene_notes
  if genes.genes is None:
    return shared
  given = list(genes.genes)
  if not given:
    raise ValueError("`genes` is empty; pass None to use all shared genes")
  missing = [g for g in given if g not in set(shared)]
  if missing:
    raise ValueError(f"{len(missing)} requested gene(s) are not in both files: "
                     f"{profiles_lib._show(missing)}")
  if len(set(given)) != len(given):
    raise ValueError("`genes` lists a gene more than once")
  return np.asarray(given)


def resolve_labels(pred, real, keys: tuple, settings: Settings, notes: list) -> Labels:
  """Queries and candidates (the control left out unless included), and the target-gene map."""
  real_key, pred_key, control = keys
  real_labels = real.obs_codes(real_key)
  pred_labels = pred.obs_codes(pred_key)
  real_uniq = real_labels.sorted_unique()
  pred_uniq = pred_labels.in_order_of_appearance()
  baselines = _check_control(pred, real, keys, real_uniq, pred_uniq, settings, notes)

  def drop_control(labels):
    return [x for x in labels.tolist() if settings.labels.include_control or x != control]

  queries, candidates, label_notes = profiles_lib.align_perturbations(
      drop_control(pred_uniq), drop_control(real_uniq), unmatched=settings.labels.unmatched,
      pred_name=pred.name, real_name=real.name)
  notes += label_notes
  checks.check_sizes(queries, candidates, settings.scoring.k, settings.null.kind)
  target_map = targets_lib.target_map(settings.genes.target_genes, real, real_key, real_labels,
                                      pred, pred_key, set(real_uniq) | set(pred_uniq))
  return Labels(real_key, pred_key, control, real_labels, pred_labels, queries, candidates,
                target_map, baselines)


def _check_control(pred, real, keys, real_uniq, pred_uniq, settings: Settings, notes: list
                   ) -> tuple[str, ...]:
  """Checks the control against the labels and the delta; returns the baselines to score."""
  real_key, pred_key, control = keys
  delta, baselines = settings.expression.delta, settings.scoring.baselines
  if control is not None and control not in set(real_uniq):
    raise ValueError(
        f"control label {control!r} not found in {real.where(f'obs[{real_key!r}]')} (labels: "
        f"{profiles_lib._show(real_uniq.tolist())}); pass the control label as `control` "
        "(CLI: --control), or control=False (--no-control) if the data has no control cells.")
  if control is None:
    if delta == "control" or delta == "pred_control":
      raise ValueError(f"delta={delta!r} needs control cells, but control=False")
    if any(baselines_lib.REGISTRY[b].needs_control for b in baselines):
      baselines = tuple(b for b in baselines if not baselines_lib.REGISTRY[b].needs_control)
      notes.append("no control: the control baseline is skipped")
  if delta == "pred_control" and control not in set(pred_uniq):
    raise ValueError(f"delta='pred_control' needs control cells labelled {control!r} in "
                     f"{pred.where(f'obs[{pred_key!r}]')}; found none. Use delta='control' to "
                     "subtract the real control from both files.")
  return baselines


def read_profiles(pred, real, labels: Labels, genes: np.ndarray, settings: Settings
                  ) -> Profiles:
  """One streamed pass per file: the real groups in split halves, the predictions per query."""
  e, control = settings.expression, labels.control
  real_groups = list(labels.candidates) + (
      [control] if control is not None and control not in labels.candidates else [])
  real_idx = labels.real.index_in(real_groups)
  half = baselines_lib.split_halves(real_idx, seed=_split_seed(settings.null.key,
                                                                settings.null.seed))
  real_codes = np.where(real_idx >= 0, 2 * real_idx + half, -1)
  sums, counts = profiles_lib.group_sums(real, real_codes, 2 * len(real_groups), layer=e.layer,
                                         normalize=e.normalize, chunk_size=e.chunk_size,
                                         progress=settings.progress, desc="real cells")
  sums = _columns(sums, real.var_names.get_indexer(genes))
  n_real = counts[0::2] + counts[1::2]
  real_full = sums[0::2] + sums[1::2]
  real_full /= n_real[:, None]
  pred_groups = list(labels.queries) + ([control] if e.delta == "pred_control" else [])
  pred_idx = labels.pred.index_in(pred_groups)
  psums, pcounts = profiles_lib.group_sums(pred, pred_idx, len(pred_groups), layer=e.pred_layer,
                                           normalize=e.pred_normalize, chunk_size=e.chunk_size,
                                           progress=settings.progress, desc="predictions")
  pred_gidx = pred.var_names.get_indexer(genes)
  pred_full = _columns(psums, pred_gidx) / pcounts[:, None]
  return Profiles(genes, real_groups, sums, counts, real_full, n_real, pred_full, pcounts,
                  pred_gidx)


def select_genes(profiles: Profiles, labels: Labels, settings: Settings, notes: list
                 ) -> tuple[Profiles, Optional[targets_lib.Targets]]:
  """The `n_top_genes` most variable genes, and each query's target genes among those kept."""
  n_top = settings.genes.n_top_genes
  if n_top is not None:
    genes = profiles.genes
    if n_top >= len(genes):
      notes.append(f"n_top_genes={n_top} >= {len(genes)} shared genes: all are used")
    else:
      cand_profiles = profiles.real[:len(labels.candidates)]
      top = profiles_lib.top_variable_genes(cand_profiles, genes, n_top)
      profiles = profiles.subset(top, pd.Index(genes).get_indexer(top))
      notes.append(f"{n_top} most variable genes across the real profiles")
  targets = (None if labels.target_map is None else targets_lib.Targets.build(
      labels.target_map, labels.queries, labels.candidates, profiles.genes, notes))
  return profiles, targets


def apply_delta(pred, real, profiles: Profiles, labels: Labels, targets, settings: Settings
                ) -> tuple[context_lib.Context, np.ndarray]:
  """The shared `Context` and the `[Q, G]` predictions, both less the delta reference (SPEC §7).

  The real control is the default reference of both files. Raises when the
  profiles are large enough for the distances to overflow (`checks.check_magnitude`).
  """
  e, metric = settings.expression, settings.scoring.metric
  queries, candidates = labels.queries, labels.candidates
  cand_profiles = profiles.real[:len(candidates)]
  real_ref = pred_ref = None
  if e.delta == "control":
    real_ref = pred_ref = _control_profile(profiles, labels)
  elif e.delta == "pred_control":
    real_ref, pred_ref = _control_profile(profiles, labels), profiles.pred[len(queries)]
  elif e.delta == "mean":
    real_ref = pred_ref = baselines_lib.mean_profile(cand_profiles)
  references = jnp.asarray(cand_profiles if real_ref is None else cand_profiles - real_ref,
                           scoring.default_float())
  truth = pd.Index(candidates).get_indexer(queries)
  ctx = context_lib.Context(
      settings=settings, queries=list(queries), candidates=list(candidates),
      genes=np.asarray(profiles.genes), pred_var_names=pred.var_names,
      pred_gene_idx=profiles.pred_gene_idx, pred_key=labels.pred_key, pred_reference=pred_ref,
      real_reference=real_ref, references=references, truth=jnp.asarray(truth, jnp.int32),
      relevance=jnp.asarray(np.arange(len(candidates))[None, :] == truth[:, None]),
      targets=targets)
  predictions = ctx.transform_pred(profiles.pred[:len(queries)])
  checks.check_magnitude(predictions, checks.named(pred), metric)
  checks.check_magnitude(ctx.transform_real(profiles.real), checks.named(real), metric)
  return ctx, predictions


def score_model(ctx: context_lib.Context, predictions: np.ndarray, labels: Labels,
                settings: Settings, notes: list) -> ScoredModel:
  """The model's ranks and scores, and its p-values under the null of `settings.null`."""
  sc, null = settings.scoring, settings.null
  n_q, n_cand = len(labels.queries), len(labels.candidates)
  model = scoring.score(labels.queries, predictions, ctx.references, np.asarray(ctx.truth),
                        np.arange(n_q), metric=sc.metric, k=sc.k, ties=sc.ties,
                        exclude=_query_exclude(ctx, labels.queries), direction=sc.direction)
  if sc.direction == "real_to_pred" and n_cand > n_q:
    notes.append(f"real_to_pred: the {n_cand - n_q} real perturbation(s) without a prediction "
                 "have no own prediction to rank and are not scored")
  if null.kind == "model":
    null_key = jax.random.fold_in(jax.random.key(null.seed) if null.key is None else null.key, 2)
  else:
    null_key = None
  pvals, n_null, cand_p = null_pvalues.query_pvalues(
      null, ctx, predictions, model, key=null_key, progress=settings.progress, notes=notes,
      candidate_level=sc.candidate_level)
  cand_curve = (null_pvalues.candidate_view(
      null_pvalues.candidate_pvalues(null.kind, cand_p, ctx, predictions), ctx, sc.direction)
      if sc.candidate_level else None)
  if null.kind == "label":
    notes.append(f"label null: exact, over the {n_q} predictions (n_null = Q - 1)")
    if null.n_null is not None:
      notes.append(f"n_null={null.n_null} is not used by the exact label null")
  else:
    model = model.with_pvalues(pvals, sc.k)
  return ScoredModel(model, n_null, cand_curve)


def score_baselines(real, ctx: context_lib.Context, profiles: Profiles, labels: Labels,
                    settings: Settings, n_null: int, notes: list) -> dict[str, ScoredBaseline]:
  """Each baseline scored like the model, under the model's null kind where it has a meaning.

  `n_null`: the model null's replicates (`null_pvalues.baseline_null`).
  """
  specs = [baselines_lib.REGISTRY[name] for name in labels.baselines]
  if len(labels.queries) < 2 and any(spec.input_agnostic for spec in specs):
    notes.append("the mean and control baselines are skipped: their label null needs at least "
                 "2 queries")
    specs = [spec for spec in specs if not spec.input_agnostic]
  out = {}
  for spec in specs:
    if spec.input_agnostic:
      out[spec.name] = _one_profile_baseline(spec, ctx, profiles, labels, settings, n_null)
    else:
      scored = _split_half_baseline(real, ctx, profiles, labels, settings, n_null, notes)
      if scored is not None:
        out[spec.name] = scored
  notes += null_pvalues.baseline_null_note(settings.null.kind, tuple(out))
  return out


def _one_profile_baseline(spec: baselines_lib.Baseline, ctx: context_lib.Context,
                          profiles: Profiles, labels: Labels, settings: Settings, n_null: int
                          ) -> ScoredBaseline:
  """A baseline that predicts one profile for every query (the mean or the control)."""
  sc, queries, n_cand = settings.scoring, labels.queries, len(labels.candidates)
  n_control = (None if labels.control is None
               else profiles.n_real[profiles.real_groups.index(labels.control)])
  profile, n_pred = spec.predict(profiles.real[:n_cand], profiles.n_real[:n_cand],
                                 _control_profile(profiles, labels), n_control)
  exclude = _query_exclude(ctx, queries)
  x = scoring.one_profile_rows(ctx.transform_real(profile), len(queries), n_cand,
                               host_l1=scoring.uses_host_l1(sc.metric, exclude))
  scored = scoring.score(queries, x, ctx.references, np.asarray(ctx.truth),
                         np.zeros(len(queries)), metric=sc.metric, k=sc.k, ties=sc.ties,
                         exclude=exclude, direction=sc.direction)
  scored, kind, b = null_pvalues.baseline_null(scored, spec.name, settings.null.kind, n_null,
                                               sc.k)
  table = scored.table(_ranked(labels, sc.direction), sc.k, np.full(len(queries), n_pred),
                       _query_n_real(profiles, labels))
  return ScoredBaseline(scored, kind, b, table)


def _split_half_baseline(real, ctx: context_lib.Context, profiles: Profiles, labels: Labels,
                         settings: Settings, n_null: int, notes: list
                         ) -> Optional[ScoredBaseline]:
  """Half of each perturbation's real cells predict the other half; None when too few cells."""
  sc, candidates = settings.scoring, labels.candidates
  n_cand = len(candidates)
  n_a, n_b = profiles.half_counts[0::2][:n_cand], profiles.half_counts[1::2][:n_cand]
  ok = n_a > 0
  if ok.sum() < 2:  # its label null needs 2 queries
    notes.append(f"split-half skipped: {int(ok.sum())} perturbation(s) have 2 or more real "
                 "cells, and it needs at least 2")
    return None
  if not ok.all():
    left = [c for c, o in zip(candidates, ok) if not o]
    notes.append(f"split-half leaves out {len(left)} perturbation(s) with fewer than 2 real "
                 f"cells: {profiles_lib._show(left, 5)}")
  half_a = profiles.half_sums[0::2][:n_cand][ok] / n_a[ok, None]
  half_b = profiles.half_sums[1::2][:n_cand] / n_b[:, None]
  checks.check_magnitude(ctx.transform_real(np.concatenate([half_a, half_b])), checks.named(real),
                         sc.metric)
  sh_q = np.asarray(candidates)[ok]
  scored = scoring.score(sh_q, ctx.transform_real(half_a), ctx.transform_real(half_b),
                         np.flatnonzero(ok), np.arange(len(sh_q)), metric=sc.metric, k=sc.k,
                         ties=sc.ties, exclude=_query_exclude(ctx, sh_q), direction=sc.direction)
  scored, kind, b = null_pvalues.baseline_null(scored, "split_half", settings.null.kind, n_null,
                                               sc.k)
  table = scored.table(sh_q if sc.direction == "real_to_pred" else candidates, sc.k, n_a[ok],
                       n_b[ok])
  return ScoredBaseline(scored, kind, b, table)


def build_report(pred, real, ctx: context_lib.Context, profiles: Profiles, labels: Labels,
                 settings: Settings, model: ScoredModel,
                 baselines: Mapping[str, ScoredBaseline], notes: list) -> report_lib.Report:
  """The frozen `Report`: tables (with excluded genes and direction), popularity, summary."""
  sc, n_q = settings.scoring, len(labels.queries)
  ranked = _ranked(labels, sc.direction)
  table = model.scored.table(ranked, sc.k, profiles.n_pred[:n_q], _query_n_real(profiles, labels))
  for t in (table, *(b.table for b in baselines.values())):
    if ctx.targets is not None:
      t["excluded_genes"] = ctx.targets.names(t["perturbation"])
    t["direction"] = sc.direction  # the CSV says what each rank is among
  cand_n = profiles.n_real[:len(labels.candidates)]
  popularity = pd.DataFrame({"perturbation": ranked, "n_cells": (
      profiles.n_pred[:n_q] if sc.direction == "real_to_pred" else cand_n),
                             "top1_count": model.scored.popularity})
  summary = _summary(pred, real, ctx, profiles, labels, settings, model, baselines, notes)
  return report_lib.Report(
      summary=types.MappingProxyType(report_lib.json_safe(summary)),
      per_perturbation=table,
      curves=types.MappingProxyType(
          {"model": model.scored.curve, **{name: b.scored.curve for name, b in baselines.items()}}),
      baseline_tables=types.MappingProxyType({name: b.table for name, b in baselines.items()}),
      popularity=popularity,
      genes=tuple(str(g) for g in profiles.genes),
      candidate_curve=model.candidate_curve,
  )


def _summary(pred, real, ctx: context_lib.Context, profiles: Profiles, labels: Labels,
             settings: Settings, model: ScoredModel, baselines: Mapping[str, ScoredBaseline],
             notes: list) -> dict:
  """``report.summary`` before it is made JSON-safe (its keys in the order of `report.json`)."""
  sc, m = settings.scoring, model.scored
  ranked = _ranked(labels, sc.direction)
  n_other = (len(ranked) - 1 if sc.direction == "real_to_pred"
             else np.sum(~np.asarray(ctx.relevance), axis=1))
  return {
      "twinbench_version": version.__version__,
      "metric_version": version.METRIC_VERSION,
      **m.stats(sc.k, model.n_null),
      "k": sc.k,
      "normalized_rank": float(np.mean((m.ranks - 1.0) / np.maximum(n_other, 1))),
      "null": settings.null.kind,
      "alpha": scoring.ALPHA,
      "n_candidates": len(ranked),
      "n_genes": int(len(profiles.genes)),
      "popularity_gini": m.gini,
      "data_fingerprint": report_lib.data_fingerprint(
          profiles.genes, labels.candidates, profiles.n_real[:len(labels.candidates)]),
      "baselines": {name: float(b.scored.curve.auc) for name, b in baselines.items()},
      "baseline_details": {name: {**b.scored.stats(sc.k, b.n_null), "null": b.null}
                           for name, b in baselines.items()},
      **({"candidate_auc_f1": float(model.candidate_curve.auc)} if sc.candidate_level else {}),
      "settings": settings.report_settings(
          perturbation_key=labels.real_key, pred_perturbation_key=labels.pred_key,
          control=labels.control, pred=pred.name, real=real.name),
      "notes": list(notes),
  }


def _ranked(labels: Labels, direction: str) -> list:
  """What the ranks are over: the real candidates, or (real_to_pred) the predictions."""
  return labels.queries if direction == "real_to_pred" else labels.candidates


def _query_n_real(profiles: Profiles, labels: Labels) -> np.ndarray:
  """`[Q]` real cells of each query's truth."""
  cand_n = profiles.n_real[:len(labels.candidates)]
  return cand_n[pd.Index(labels.candidates).get_indexer(labels.queries)]


def _query_exclude(ctx: context_lib.Context, labels) -> Optional[np.ndarray]:
  """`[n, T]` target genes of each label (padded with -1), or None without target genes."""
  return None if ctx.targets is None else ctx.targets.index(labels)


def _control_profile(profiles: Profiles, labels: Labels) -> Optional[np.ndarray]:
  """`[G]` the real control profile, or None without a control."""
  if labels.control is None:
    return None
  return profiles.real[profiles.real_groups.index(labels.control)]


def _columns(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
  """`a[:, idx]`, without the copy when `idx` takes every column in order (the usual case)."""
  if idx.shape[0] == a.shape[1] and np.array_equal(idx, np.arange(a.shape[1])):
    return a
  return a[:, idx]


def _split_seed(key: Optional[jax.Array], seed: int) -> int:
  """Seed of the split halves: `seed`, or derived from the bits of `key` (no device work)."""
  if key is None:
    return int(seed)
  data = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                    else key).ravel()
  return int(np.random.SeedSequence([int(v) for v in data] + [1]).generate_state(1)[0])
