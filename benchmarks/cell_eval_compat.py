"""cell-eval's perturbation discrimination score, rebuilt from twinbench_jax primitives.

cell-eval (Arc Institute's Virtual Cell Challenge evaluator, PyPI `cell-eval`
0.8.x, metric ``discrimination_score_l1``) scores each perturbation `p` of a
prediction file as follows (read from its installed source, 0.8.2):

1. pseudobulk: the mean of `.X` over the cells of every label, control included;
2. deltas: predicted mean minus the *prediction file's own* control mean, real
   mean minus the real control mean;
3. L1 distance from the predicted delta of `p` to every real delta, with the
   gene column whose name equals the label `p` left out (for that query only);
4. `rank` = 0-based position of the real delta of `p` in an (unstable) argsort
   of those distances, i.e. the number of real perturbations strictly closer
   when there are no exact ties;
5. score `= 1 - rank / P` over the `P` non-control perturbations, in `[1/P, 1]`.

Here the same number comes from `tb.similarity(metric="l1")` and
`tb.truth_ranks(ties="optimistic")`. The left-out column differs per query, so
a single `[Q, C]` L1 matrix cannot be computed on "the" gene subset; instead
the left-out column's contribution `|x[q, t_q] - y[c, t_q]|` is subtracted from
the full L1 distance (an `O(Q·C)` correction, exact up to one rounding).

The score is a normalised rank with no null: a prediction that ignores its
input (the mean baseline) still scores about 0.5 on average, and close to 1 for
the perturbations whose real delta lies near the centroid of all deltas.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import twinbench_jax as tb


class Discrimination(NamedTuple):
  """Per-perturbation discrimination scores in cell-eval's definition.

  Attributes:
    labels: `[P]` perturbation labels, sorted (cell-eval's order).
    scores: `[P]` `1 - rank / P`.
    ranks: `[P]` 0-based rank of the truth (number of strictly closer real deltas).
    distances: `[P, P]` L1 distances from predicted deltas (rows) to real deltas
      (columns), each row without its own target gene column.
    pred_deltas: `[P, G]` predicted deltas (to the prediction's own control).
    real_deltas: `[P, G]` real deltas (to the real control).
  """

  labels: np.ndarray
  scores: np.ndarray
  ranks: np.ndarray
  distances: np.ndarray
  pred_deltas: np.ndarray
  real_deltas: np.ndarray


def target_columns(labels, genes) -> np.ndarray:
  """`[Q]` column of the gene named like each label, `-1` when no gene has that name."""
  index = {str(g): i for i, g in enumerate(np.asarray(genes).tolist())}
  return np.asarray([index.get(str(p), -1) for p in np.asarray(labels).tolist()], np.int32)


@jax.jit
def l1_without_target(x: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
  r"""`[Q, C]` L1 distances that leave out one feature column per query.

  .. math::
     d_{qc} = \sum_{g \ne t_q} |x_{qg} - y_{cg}|
            = \|x_q - y_c\|_1 - |x_{q t_q} - y_{c t_q}|

  Args:
    x: `[Q, G]` queries.
    y: `[C, G]` candidates.
    target: `[Q]` int column left out for query `q`; `-1` leaves none out.

  Returns:
    `[Q, C]` distances (the dtype of `x` and `y`).
  """
  full = -tb.similarity(x, y, metric="l1")
  col = jnp.maximum(target, 0)
  left_out = jnp.abs(x[jnp.arange(x.shape[0]), col][:, None] - y[:, col].T)  # [Q, C]
  return full - jnp.where(target[:, None] >= 0, left_out, 0.0)


def discrimination_from_deltas(pred_deltas, real_deltas, labels, genes, *,
                               exclude_target: bool = True) -> Discrimination:
  """cell-eval's discrimination score from aligned delta matrices.

  Args:
    pred_deltas: `[P, G]` predicted deltas, row `p` for `labels[p]`.
    real_deltas: `[P, G]` real deltas in the same row order.
    labels: `[P]` perturbation labels.
    genes: `[G]` gene names (columns).
    exclude_target: leave out, for each query, the gene named like its label.

  Returns:
    A `Discrimination`. Computed in float64 when `jax_enable_x64` is on, else
    in float32.
  """
  x = jnp.asarray(pred_deltas)
  y = jnp.asarray(real_deltas)
  p = x.shape[0]
  target = target_columns(labels, genes) if exclude_target else np.full(p, -1, np.int32)
  d = l1_without_target(x, y, jnp.asarray(target))
  ranks = tb.truth_ranks(-d, jnp.eye(p, dtype=bool), ties="optimistic") - 1.0
  ranks = np.asarray(ranks, np.float64)
  return Discrimination(np.asarray(labels), 1.0 - ranks / p, ranks.astype(np.int64),
                        np.asarray(d), np.asarray(x), np.asarray(y))


def cell_eval_discrimination(
    adata_pred: Any,
    adata_real: Any,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    exclude_target: bool = True,
    layer: Optional[str] = None,
) -> Discrimination:
  """cell-eval's ``discrimination_score_l1`` for a prediction/real AnnData pair.

  Pseudobulks come from `tb.pseudobulk` (dense or sparse, in memory or a
  path); the distances and ranks from `tb.similarity` and `tb.truth_ranks`.

  Args:
    adata_pred: predicted cells (AnnData or `.h5ad` path), with control cells.
    adata_real: real cells, same genes in the same order, same labels.
    perturbation_key: `obs` column of the labels.
    control: the control label.
    exclude_target: leave out each perturbation's own gene column (cell-eval's default).
    layer: layer to read instead of `X`.

  Returns:
    A `Discrimination` over the non-control perturbations, sorted by label.
  """
  pred = tb.pseudobulk(adata_pred, perturbation_key=perturbation_key, layer=layer)
  real = tb.pseudobulk(adata_real, perturbation_key=perturbation_key, layer=layer)
  if not np.array_equal(pred.genes, real.genes):
    raise ValueError("`adata_pred` and `adata_real` must have the same genes in the same order "
                     "(cell-eval requires it)")
  if not np.array_equal(pred.labels, real.labels):
    raise ValueError("`adata_pred` and `adata_real` must have the same perturbation labels")
  labels = pred.labels.astype(str)
  if control not in set(labels.tolist()):
    raise ValueError(f"control label {control!r} not found in `obs[{perturbation_key!r}]`")
  is_pert = labels != control
  ci = int(np.flatnonzero(~is_pert)[0])
  dtype = jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32
  pred_deltas = (pred.means[is_pert] - pred.means[ci]).astype(dtype)
  real_deltas = (real.means[is_pert] - real.means[ci]).astype(dtype)
  return discrimination_from_deltas(pred_deltas, real_deltas, labels[is_pert], real.genes,
                                    exclude_target=exclude_target)


def distance_to_centroid(real_deltas) -> np.ndarray:
  """`[P]` L1 distance from each real delta to the mean of all real deltas."""
  d = np.asarray(real_deltas, np.float64)
  return np.abs(d - d.mean(axis=0)).sum(axis=1)


def evaluate_options(evaluate: Callable, labels, control: str) -> dict:
  """Keyword options that make `tb.evaluate` rank like cell-eval's discrimination score.

  L1 distances between deltas to each file's own control, and, where this
  version of `tb.evaluate` has `target_genes`, each perturbation's own gene
  (the one named like its label) left out of its distances.

  Args:
    evaluate: `tb.evaluate` (inspected for `target_genes`).
    labels: perturbation labels of the real cells.
    control: the control label (never a target).
  """
  options = dict(metric="l1", delta="pred_control")
  if "target_genes" in inspect.signature(evaluate).parameters:
    names = sorted({str(v) for v in np.asarray(labels).tolist()} - {str(control)})
    options["target_genes"] = {name: name for name in names}
  return options
