"""One predictor's scores under the label null (SPEC §2–4): the compiled kernel and `score`.

Similarities with excluded target genes (SPEC §7) or from the CPU L1 loop, then
`core.label_scoring`; `score` returns them as numpy (`Scored`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from twinbench_jax._src.core import auc as auc_lib
from twinbench_jax._src.core import label_scoring
from twinbench_jax._src.core import native
from twinbench_jax._src.core import pvalues as pvalues_lib
from twinbench_jax._src.core import ranking
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation
from twinbench_jax._src.evaluate import executables
from twinbench_jax._src.evaluate import report as report_lib

# p-value threshold of the `called` column and of `fraction_called`.
ALPHA = 0.05


def default_float():
  """JAX's default float: float32, or float64 under `jax_enable_x64` (profiles are float64)."""
  return jnp.result_type(float)


def score_kernel(x, y, truth, rows, exclude, l1, *, metric, k, ties,
                  direction="pred_to_real"):
  """Every number of one predictor in a single compiled kernel.

  Similarities (computed here: excluded genes, host L1, rank direction), then
  the shared label-null chain (`label_scoring.label_null_scores`: truth
  ranks, own scores, label-null p-values, the AUC-F1 curve), popularity and
  Benjamini–Hochberg p-values. One kernel compiles once (about a second on a
  CPU) where separate ones would each pay a compile.

  Args:
    x: `[R, G]` predicted profiles.
    y: `[C, G]` real candidate profiles.
    truth: `[Q]` index of each query's real candidate (labels are unique on
      both sides, so each query has exactly one relevant candidate).
    rows: `[Q]` row of `x` each query predicts with. A baseline that predicts
      one profile for every query points every query at row 0, so its queries
      get bitwise identical scores (a batched matmul may round identical rows
      differently) and the label null gives p = 1, AUC-F1 = 0 exactly.
    exclude: None, or `[Q, T]` int32 indices of each query's target genes
      (padded with -1), left out of that query's similarities (SPEC §7). Query
      `q`'s row of `s` is compared on its kept genes; so is every own score
      against its truth in the label null (`cross[:, j]` uses query `j`'s kept
      genes), so a predictor that says the same for every query still gets
      p = 1.
    l1: None, or (metric "l1" only) the `[Q, C]` all-gene L1 distances of
      `x[rows]` to `y`, computed outside the kernel by the compiled CPU loop
      (`_host_l1`); with at most one excluded gene per query the kernel then
      never reads all of `[Q, C, G]` itself.
    direction: ``"pred_to_real"`` ranks each query's truth among the real
      candidates (rows of `s`); ``"real_to_pred"`` ranks each query's own
      prediction among the `Q` predictions against its truth (columns of
      `cross`, so query `j`'s excluded genes apply), and `top1`/`popularity`
      then index predictions. The label null is the same in both directions.

  Returns:
    The numbers above, then `trusted`: False when `l1` less the excluded genes
    could not stand in for the masked sums (the results are then not to be
    used: run the kernel again without `l1`).
  """
  # Whether the distances `l1` less each excluded gene stand in for the masked sums
  # (`l1_less_one_gene`); when not, the caller runs the kernel again without `l1`.
  trusted = jnp.asarray(True)
  one_gene = (exclude is not None and exclude.shape[1] == 1
              and similarity_lib.get_metric(metric).host_loop)
  if exclude is None:
    s = -l1 if l1 is not None else similarity_lib._similarity(x, y, metric=metric)[rows]
    cross = s[:, truth]  # [i, j]: own score of prediction i against the truth of query j
  elif one_gene and l1 is not None:
    s, cross, trusted = l1_less_one_gene(x, y, truth, rows, exclude[:, 0], l1)
  elif one_gene:
    s, cross = l1_one_gene_excluded(x, y, truth, rows, exclude[:, 0])
  else:
    s, cross = excluded_scores(x, y, truth, rows, exclude, metric)
  if direction == "real_to_pred":
    s = cross.T  # [j, i]: the truth of query j against prediction i
    rel = jnp.arange(s.shape[1])[None, :] == jnp.arange(s.shape[0])[:, None]
  else:
    rel = jnp.arange(s.shape[1])[None, :] == truth[:, None]
  res = label_scoring.label_null_scores(s, cross, rel, k=k, ties=ties)
  top1 = jnp.argmax(validation.nan_to_neg_inf(s), axis=1)
  popularity = ranking.top1_counts(s)
  bh = pvalues_lib._benjamini_hochberg(res.pvalues)
  return (res.ranks, res.own_scores, res.pvalues, top1, popularity, ranking.gini(popularity),
          res.curve, bh, trusted)


def excluded_scores(x, y, truth, rows, exclude, metric):
  """`(s, cross)` of `score_kernel` with per-query excluded genes, two masked passes."""
  s = similarity_lib._similarity_excluded(x[rows], y, exclude, None, metric=metric)
  # Truth j against every prediction on query j's kept genes (the metrics are symmetric).
  cross = similarity_lib._similarity_excluded(y[truth], x, exclude, None,
                                              metric=metric)[:, rows].T
  return s, cross


def l1_one_gene_excluded(x, y, truth, rows, gene):
  """`(s, cross)` for L1 with one excluded gene per query (`gene`, -1 = none): one L1 pass.

  Both matrices are the all-gene distances `d = |x_r - y_c|_1` less the
  excluded gene's term (`l1_less_one_gene`), where the masked passes of
  `excluded_scores` read all of `[Q, C, G]` twice. The exclusion of
  cell-eval's discrimination score (each perturbation's own gene) has this
  form. The masked passes run instead when the subtraction cannot be trusted.
  """
  d = similarity_lib.l1_distances(x, y)[rows]  # [Q, C]
  s, cross, trusted = l1_less_one_gene(x, y, truth, rows, gene, d)
  return jax.lax.cond(trusted, lambda: (s, cross),
                      lambda: excluded_scores(x, y, truth, rows, gene[:, None], "l1"))


def l1_less_one_gene(x, y, truth, rows, gene, d):
  """`(s, cross, trusted)`: the L1 scores less each query's excluded gene, from `d`.

  `d` (`[Q, C]`) holds the all-gene distances of `x[rows]` to `y`. `trusted`
  is False when the subtraction cannot stand in for the masked sum: a
  non-finite value at an excluded gene (`d` minus its term would be NaN), or
  a term more than `_MAX_TERM_RATIO` times the distance left after it (the
  rounding of `d` would then outweigh the rounding of a masked sum). A
  difference of exactly 0 is exact either way and is always trusted.
  """
  q = rows.shape[0]
  ok = (gene >= 0) & (gene < x.shape[1])
  g = jnp.where(ok, gene, 0)
  x_q = x[rows]  # [Q, G]: the prediction each query is scored with
  own = (d, x_q[jnp.arange(q), g][:, None], y[:, g].T, ok[:, None])  # query q's gene
  cross = (d[:, truth], x_q[:, g], y[truth, g][None, :], ok[None, :])  # [i, j]: query j's gene

  def trusted(d, x_at, y_at, valid):
    term = jnp.abs(x_at - y_at)
    rest = d - term
    return jnp.all(~valid | (jnp.isfinite(term) & ~((rest > 0) & (term > _MAX_TERM_RATIO * rest))))

  return (-similarity_lib.l1_minus_gene(*own), -similarity_lib.l1_minus_gene(*cross),
          trusted(*own) & trusted(*cross))


# Largest excluded term, relative to the distance over the other genes, for which
# the all-gene L1 less that term stands in for the masked sum (4 bits of rounding).
_MAX_TERM_RATIO = 16.0


_STATIC = ("metric", "k", "ties", "direction")
_score_jit = jax.jit(score_kernel, static_argnames=_STATIC)
# Small problems: compilation is nearly all of the time, and XLA's backend
# optimisation (LLVM) is most of the compilation; skipping it halves the first
# call at a runtime cost that is negligible at this size.
_score_jit_small = jax.jit(score_kernel, static_argnames=_STATIC,
                           compiler_options={"xla_backend_optimization_level": 0})
# Entries of `x` and `y` (rows x genes), and of the `[Q, C]` score matrix, up to which
# the small-problem kernel is used.
_SMALL = 1 << 21
_SMALL_SCORES = 1 << 18


def _run_score_kernel(x, y, truth, rows, exclude, l1=None, **kwargs):
  small = ((x.shape[0] + y.shape[0]) * x.shape[1] <= _SMALL
           and rows.shape[0] * y.shape[0] <= _SMALL_SCORES)
  kernel, name = (_score_jit_small, "score_small") if small else (_score_jit, "score")
  return executables.call(kernel, name, x, y, truth, rows, exclude, l1, **kwargs)


def uses_host_l1(metric: str, exclude) -> bool:
  """Whether `_host_l1` computes the distances for this metric and exclusion."""
  return (similarity_lib.get_metric(metric).host_loop
          and (exclude is None or np.shape(exclude)[1] == 1)
          and jax.default_backend() == "cpu" and native.host_l1_possible(default_float()))


def _host_l1(x: np.ndarray, y: np.ndarray, rows: np.ndarray, metric: str, exclude
             ) -> Optional[np.ndarray]:
  """`[Q, C]` L1 distances of `x[rows]` to `y` from the compiled CPU loop, or None.

  Used where it is faster than XLA's reduction (about 5x on 2 cores): the L1
  metric with at most one excluded gene per query, on the CPU backend, with
  the loops available (`native.host_l1`, which takes the loop's numpy twin
  for small problems where it is checked equal). Each distinct row of `x` is
  computed once, so a baseline that predicts one profile for every query
  costs one row and gets bitwise identical rows.
  """
  if not uses_host_l1(metric, exclude):
    return None
  dtype = default_float()
  used, inverse = np.unique(np.asarray(rows), return_inverse=True)
  d = native.host_l1(np.asarray(np.asarray(x)[used], dtype), np.asarray(y, dtype))
  if d is None:
    return None
  return d if used.size == rows.shape[0] and np.array_equal(used, rows) else d[inverse]


def _finish(p, ranks, k):
  correct = ranks <= k
  return auc_lib._auc_f1(p, correct, jnp.ones_like(correct)), pvalues_lib._benjamini_hochberg(p)


# The AUC-F1 curve and BH p-values for p-values from another null.
_finish_kernel = jax.jit(_finish, static_argnames=("k",))


@dataclasses.dataclass(frozen=True)
class Scored:
  """Numpy results of one predictor (the model or a baseline)."""

  labels: np.ndarray
  ranks: np.ndarray
  own: np.ndarray
  pvalues: np.ndarray
  pvalues_bh: np.ndarray
  top1: np.ndarray
  popularity: np.ndarray
  gini: float
  curve: auc_lib.AucF1Result

  def with_pvalues(self, pvalues: np.ndarray, k: int) -> "Scored":
    """The same ranks with p-values from another null."""
    curve, bh = executables.call(_finish_kernel, "finish", jnp.asarray(pvalues, default_float()),
                                 jnp.asarray(self.ranks, default_float()), k=k)
    return dataclasses.replace(self, pvalues=np.asarray(pvalues, np.float64),
                               pvalues_bh=np.asarray(bh, np.float64),
                               curve=report_lib.curve_to_numpy(curve))

  def table(self, candidates, k, n_cells_pred, n_cells_real) -> pd.DataFrame:
    return pd.DataFrame({
        "perturbation": self.labels,
        "rank": self.ranks,
        "pvalue": self.pvalues,
        "pvalue_bh": self.pvalues_bh,
        "called": self.pvalues <= ALPHA,
        "correct": self.ranks <= k,
        "own_score": self.own,
        "top1": np.asarray(candidates)[self.top1],
        "n_cells_pred": n_cells_pred,
        "n_cells_real": n_cells_real,
    })

  def stats(self, k, n_null) -> dict:
    return {
        "auc_f1": float(self.curve.auc),
        "hit_at_1": float(np.mean(self.ranks <= 1)),
        f"hit_at_{k}": float(np.mean(self.ranks <= k)),
        "mrr": float(np.mean(1.0 / self.ranks)),
        "mean_rank": float(np.mean(self.ranks)),
        "fraction_called": float(np.mean(self.pvalues <= ALPHA)),
        "fraction_called_bh": float(np.mean(self.pvalues_bh <= ALPHA)),
        "n_queries": int(self.ranks.shape[0]),
        "n_null": int(n_null),
    }


def score(labels, x, y, truth, rows, *, metric, k, ties, exclude=None,
           direction="pred_to_real") -> Scored:
  """Scores predictions `x[rows]` against references `y` with the label null.

  `exclude`: None or `[Q, T]` target gene indices per query; `direction`: the
  rank direction (see `score_kernel`).
  """
  l1 = _host_l1(x, y, np.asarray(rows, np.int64), metric, exclude)
  dtype = default_float()
  args = (jnp.asarray(x, dtype), jnp.asarray(y, dtype), jnp.asarray(truth, jnp.int32),
          jnp.asarray(rows, jnp.int32), None if exclude is None else jnp.asarray(exclude, jnp.int32))
  # The default direction is not passed, so the default compiles exactly as before.
  opts = {} if direction == "pred_to_real" else {"direction": direction}
  out = _run_score_kernel(*args, None if l1 is None else jnp.asarray(l1), metric=metric, k=k,
                          ties=ties, **opts)
  if not bool(out[-1]):  # the subtraction of an excluded gene was not trusted: masked passes
    out = _run_score_kernel(*args, None, metric=metric, k=k, ties=ties, **opts)
  ranks, own, p, top1, pop, g, curve, bh, _ = out
  return Scored(np.asarray(labels), np.asarray(ranks, np.float64), np.asarray(own, np.float64),
                 np.asarray(p, np.float64), np.asarray(bh, np.float64), np.asarray(top1),
                 np.asarray(pop, np.float64), float(g), report_lib.curve_to_numpy(curve))



def one_profile_rows(profile: np.ndarray, n_q: int, n_c: int, *, host_l1: bool = False
                      ) -> np.ndarray:
  """The rows a baseline that predicts `profile` for all `n_q` queries is scored with.

  Every query points at row 0 (`score`'s `rows`). A small problem passes the
  model's `[Q, G]` shape, so the kernel compiled for the model is reused
  (a compile costs about a second; its Q identical similarity rows cost
  little); a large one passes the single row, compiled once for all such
  baselines, where Q identical rows would cost more than the compile. With
  the distances from `_host_l1` (`host_l1`), the one row is all that is
  computed anyway, so the model's shape is always passed.
  """
  if host_l1 or n_q * n_c * profile.shape[0] < ONE_ROW_ELEMENTS:
    return np.broadcast_to(profile, (n_q, profile.shape[0]))
  return profile[None, :]


# Q x C x G from which a one-profile baseline is scored as a single row.
ONE_ROW_ELEMENTS = 1 << 30
