"""`tb.evaluate` (SPEC §4, §6–8): predicted against real AnnData, with baselines.

Its keyword options become one frozen `settings.Settings`, which drives `steps.run`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence

import jax

from twinbench_jax._src.data import baselines as baselines_lib
from twinbench_jax._src.evaluate import checks
from twinbench_jax._src.evaluate import report as report_lib
from twinbench_jax._src.evaluate import scoring
from twinbench_jax._src.evaluate import settings as settings_lib
from twinbench_jax._src.evaluate import steps

# Re-exported: the package and older imports read them from here.
Report = report_lib.Report
ALPHA = scoring.ALPHA
DELTAS = checks.DELTAS
DIRECTIONS = checks.DIRECTIONS


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
    progress: bool = True,
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
    progress: show progress bars (default True, as in every function
      here: a bar on a terminal only, nothing in logs or pipes).
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
  # The keyword options as given (the first statement, so nothing else is local yet),
  # checked into one `Settings` before any data is read.
  options = dict(locals())
  del options["adata_pred"], options["adata_real"]
  return steps.run(adata_pred, adata_real, settings_lib.build(options))


def default_options() -> dict[str, Any]:
  """The keyword options of `evaluate` at their defaults (what `settings.build` takes)."""
  return {name: p.default for name, p in inspect.signature(evaluate).parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY}
