"""Plots of a `Report` (matplotlib): F1(α), ranks, p-values, popularity.

Each `plot_*` function draws on a given `ax` (or a new pyplot figure) and
returns the axes. `save_plots` draws on bare `Figure` objects with the Agg
canvas, so saving PNGs never touches pyplot's global state or the user's
interactive backend.
"""

from __future__ import annotations

import os

import numpy as np

# File name of each saved plot.
PLOT_FILES = {
    "f1_alpha": "f1_alpha.png",
    "rank_histogram": "rank_histogram.png",
    "pvalue_histogram": "pvalue_histogram.png",
    "popularity": "popularity.png",
}

_COLORS = {"model": "C0", "split_half": "C2", "mean": "C7", "control": "C3"}
_LABELS = {"model": "model", "split_half": "split-half baseline", "mean": "mean baseline",
           "control": "control baseline"}


def _label(report, name: str) -> str:
  if name == "model":
    return report.summary.get("settings", {}).get("name", "model")
  return _LABELS.get(name, name)


def _reverse(report) -> bool:
  """Whether the report ranks each real perturbation's prediction among the predictions."""
  return report.summary.get("settings", {}).get("direction") == "real_to_pred"


def _new_axes(ax):
  if ax is not None:
    return ax
  import matplotlib.pyplot as plt

  return plt.subplots(figsize=(5.5, 4))[1]


def step_curve(alphas: np.ndarray, f1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """x, y of the right-continuous F1(α) step function on [0, 1] (SPEC §4).

  F1 is 0 below the smallest p-value and equals `f1[i]` on
  `[alphas[i], alphas[i+1])`; zero-width steps (ties) collapse.
  """
  a = np.minimum(np.asarray(alphas, np.float64), 1.0)
  f = np.asarray(f1, np.float64)
  last = np.r_[a[1:] != a[:-1], True]  # the value that holds after a run of equal alphas
  a, f = a[last], f[last]
  x = np.r_[0.0, a, 1.0]
  y = np.r_[0.0, f, f[-1] if f.size else 0.0]
  return x, y


def plot_f1_curves(report, ax=None):
  """F1 versus α for the model and each baseline, with their AUC-F1 in the legend."""
  ax = _new_axes(ax)
  order = ["model", "split_half", "mean", "control"]
  names = sorted(report.curves, key=lambda n: order.index(n) if n in order else len(order))
  for name in names:
    curve = report.curves[name]
    x, y = step_curve(curve.alphas, curve.f1)
    ax.step(x, y, where="post", color=_COLORS.get(name), lw=2.2 if name == "model" else 1.4,
            ls="-" if name in ("model", "split_half") else "--",
            label=f"{_label(report, name)} (AUC-F1 {float(curve.auc):.3f})")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("p-value threshold α")
  ax.set_ylabel("F1(α)")
  k = report.summary.get("k", 1)
  way = ", real → predictions" if _reverse(report) else ""
  ax.set_title(f"F1 at p-value ({report.summary['null']} null, correct = rank ≤ {k}{way})",
               fontsize=10)
  ax.legend(loc="best", fontsize=8, framealpha=0.9)
  ax.grid(alpha=0.3)
  return ax


def _histogram(ax, report, column, bins, xlabel, title):
  # one per-perturbation column over the perturbations, in the model's colour
  ax = _new_axes(ax)
  ax.hist(report.per_perturbation[column].to_numpy(), bins=bins, color=_COLORS["model"],
          edgecolor="white")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("perturbations")
  ax.set_title(title, fontsize=10)
  return ax


def plot_rank_histogram(report, ax=None):
  """Histogram of the truth's rank (1 = best) over queries."""
  n_c = int(report.summary["n_candidates"])
  return _histogram(
      ax, report, "rank", np.arange(0.5, n_c + 1.5, max(1, int(np.ceil(n_c / 50)))),
      f"rank of the own prediction among {n_c} predictions (1 = best)"
      if _reverse(report) else f"rank of the truth among {n_c} candidates (1 = best)",
      f"hit@1 {report.summary['hit_at_1']:.3f}, mean rank {report.summary['mean_rank']:.2f}")


def plot_pvalue_histogram(report, ax=None):
  """Histogram of the per-query p-values, with the α = 0.05 line."""
  alpha = report.summary.get("alpha", 0.05)
  ax = _histogram(ax, report, "pvalue", np.linspace(0, 1, 21),
                  f"p-value ({report.summary['null']} null)",
                  f"called at α={alpha}: {report.summary['fraction_called']:.2f} "
                  f"(BH {report.summary['fraction_called_bh']:.2f})")
  ax.axvline(alpha, color="k", ls=":", lw=1)
  ax.set_xlim(0, 1)
  return ax


def plot_popularity(report, ax=None):
  """How often each real perturbation is ranked first across queries (SPEC §2)."""
  ax = _new_axes(ax)
  pop = report.popularity.sort_values("top1_count", ascending=False)
  n = len(pop)
  counts = pop["top1_count"].to_numpy()
  if n <= 60:
    ax.bar(np.arange(n), counts, color=_COLORS["model"])
  else:  # one filled outline, not thousands of bar patches (seconds to draw)
    ax.stairs(counts, np.arange(n + 1) - 0.5, fill=True, color=_COLORS["model"])
  ax.axhline(report.summary["n_queries"] / max(n, 1), color="k", ls=":", lw=1,
             label="even spread")
  if n <= 60:
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(pop["perturbation"].tolist(), rotation=90, fontsize=7)
  else:
    ax.set_xlabel(("predictions" if _reverse(report) else "real perturbations")
                  + ", most popular first")
  ax.set_ylabel("real perturbations ranking it first" if _reverse(report)
                else "queries ranking it first")
  ax.set_title(f"popularity (Gini {report.summary['popularity_gini']:.2f})", fontsize=10)
  ax.legend(fontsize=8, frameon=False)
  return ax


# Fixed margins (figure fractions) of the plots without tick labels of perturbation names:
# `tight_layout` would lay every text out once more before drawing (a quarter of the time).
_MARGINS = dict(left=0.13, right=0.97, bottom=0.13, top=0.92)


def save_plots(report, directory, *, dpi: int = 110) -> list[str]:
  """Writes the four PNGs of `PLOT_FILES` into `directory`; returns their paths.

  Drawn for speed (the command line draws them on every run): fixed margins
  where no label of unknown length needs room, and the fastest PNG
  compression (larger files, the same pixels).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  draw = {"f1_alpha": plot_f1_curves, "rank_histogram": plot_rank_histogram,
          "pvalue_histogram": plot_pvalue_histogram, "popularity": plot_popularity}
  paths = []
  for name, fn in draw.items():
    wide = name == "popularity" and len(report.popularity) > 30
    fig = Figure(figsize=(8 if wide else 5.5, 4))
    FigureCanvasAgg(fig)
    fn(report, ax=fig.add_subplot())
    if name == "popularity":  # perturbation names as tick labels: measure them
      fig.tight_layout()
    else:
      fig.subplots_adjust(**_MARGINS)
    path = os.path.join(os.fspath(directory), PLOT_FILES[name])
    fig.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 1})
    paths.append(path)
  return paths


# ----------------------------------------------------------------------------- comparisons

COMPARISON_FILE = "comparison.png"
# Columns of the table figure: (column, header, larger is better).
_TABLE_COLUMNS = (("auc_f1", "AUC-F1", True), ("hit_at_1", "hit@1", True), ("mrr", "MRR", True),
                  ("fraction_called", "called\nα=0.05", True))


def plot_comparison_curves(comparison, ax=None):
  """F1(α) of every model (solid) and baseline (dashed) of a `Comparison`, on one plot."""
  ax = _new_axes(ax)
  i = 0
  for name, row in comparison.table.iterrows():
    curve = comparison.curves.get(name)
    if curve is None:
      continue
    x, y = step_curve(curve["alphas"], curve["f1"])
    model = row["kind"] == "model"
    base = {label: key for key, label in _LABELS.items()}.get(name)
    color = f"C{i % 10}" if model else _COLORS.get(base, "0.5")
    i += model
    ax.step(x, y, where="post", color=color, lw=2.0 if model else 1.3,
            ls="-" if model else "--", label=f"{name} ({float(row['auc_f1']):.3f})")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("p-value threshold α")
  ax.set_ylabel("F1(α)")
  shared = comparison.shared
  ax.set_title(f"F1 at p-value ({shared.get('null')} null, correct = rank ≤ {shared.get('k')})",
               fontsize=10)
  ax.legend(loc="best", fontsize=7, framealpha=0.9, title="AUC-F1", title_fontsize=7)
  ax.grid(alpha=0.3)
  return ax


def plot_comparison_table(comparison, ax=None):
  """A table figure: one row per model and baseline, a filled circle per headline number.

  The circle's size and colour show the value on [0, 1]; the number is written
  beside it; the best model in each column is in bold.
  """
  ax = _new_axes(ax)
  table = comparison.table
  names = list(table.index)
  n_rows, n_cols = len(names), len(_TABLE_COLUMNS)
  for j, (col, header, _) in enumerate(_TABLE_COLUMNS):
    values = table[col].to_numpy(dtype=float)
    models = (table["kind"] == "model").to_numpy()
    best = np.nanmax(np.where(models, values, np.nan)) if models.any() else np.nan
    for i, v in enumerate(values):
      y = n_rows - 1 - i
      if np.isfinite(v):
        ax.scatter(j, y, s=80 + 520 * np.clip(v, 0, 1), c=[[v]], cmap="viridis", vmin=0, vmax=1,
                   edgecolors="0.3", linewidths=0.5)
      bold = models[i] and np.isfinite(v) and v == best
      ax.text(j + 0.28, y, "–" if not np.isfinite(v) else f"{v:.3f}", va="center", fontsize=8,
              fontweight="bold" if bold else "normal")
  ax.set_xticks(range(n_cols))
  ax.set_xticklabels([h for _, h, _ in _TABLE_COLUMNS], fontsize=8)
  ax.xaxis.tick_top()
  ax.set_yticks(range(n_rows))
  ax.set_yticklabels(names[::-1], fontsize=8)
  ax.set_xlim(-0.5, n_cols - 0.1)
  ax.set_ylim(-0.7, n_rows - 0.3)
  for side in ("right", "bottom", "left"):
    ax.spines[side].set_visible(False)
  ax.tick_params(length=0)
  return ax


def save_comparison_plot(comparison, directory, *, dpi: int = 110) -> str:
  """Writes `comparison.png` (curves beside the table figure) into `directory`."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  n_rows = len(comparison.table)
  fig = Figure(figsize=(11.5, max(4.0, 0.45 * n_rows + 1.5)))
  FigureCanvasAgg(fig)
  left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1.0]})
  plot_comparison_curves(comparison, ax=left)
  plot_comparison_table(comparison, ax=right)
  fig.tight_layout()
  path = os.path.join(os.fspath(directory), COMPARISON_FILE)
  fig.savefig(path, dpi=dpi)
  return path
