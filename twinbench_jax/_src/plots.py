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
  ax.set_title(f"F1 at p-value ({report.summary['null']} null, correct = rank ≤ {k})",
               fontsize=10)
  ax.legend(loc="best", fontsize=8, framealpha=0.9)
  ax.grid(alpha=0.3)
  return ax


def plot_rank_histogram(report, ax=None):
  """Histogram of the truth's rank (1 = best) over queries."""
  ax = _new_axes(ax)
  ranks = report.per_perturbation["rank"].to_numpy()
  n_c = int(report.summary["n_candidates"])
  bins = np.arange(0.5, n_c + 1.5, max(1, int(np.ceil(n_c / 50))))
  ax.hist(ranks, bins=bins, color=_COLORS["model"], edgecolor="white")
  ax.set_xlabel(f"rank of the truth among {n_c} candidates (1 = best)")
  ax.set_ylabel("perturbations")
  ax.set_title(f"hit@1 {report.summary['hit_at_1']:.3f}, mean rank "
               f"{report.summary['mean_rank']:.2f}", fontsize=10)
  return ax


def plot_pvalue_histogram(report, ax=None):
  """Histogram of the per-query p-values, with the α = 0.05 line."""
  ax = _new_axes(ax)
  p = report.per_perturbation["pvalue"].to_numpy()
  ax.hist(p, bins=np.linspace(0, 1, 21), color=_COLORS["model"], edgecolor="white")
  alpha = report.summary.get("alpha", 0.05)
  ax.axvline(alpha, color="k", ls=":", lw=1)
  ax.set_xlim(0, 1)
  ax.set_xlabel(f"p-value ({report.summary['null']} null)")
  ax.set_ylabel("perturbations")
  ax.set_title(f"called at α={alpha}: {report.summary['fraction_called']:.2f} "
               f"(BH {report.summary['fraction_called_bh']:.2f})", fontsize=10)
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
    ax.set_xlabel("real perturbations, most popular first")
  ax.set_ylabel("queries ranking it first")
  ax.set_title(f"popularity (Gini {report.summary['popularity_gini']:.2f})", fontsize=10)
  ax.legend(fontsize=8, frameon=False)
  return ax


def save_plots(report, directory, *, dpi: int = 110) -> list[str]:
  """Writes the four PNGs of `PLOT_FILES` into `directory`; returns their paths."""
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
    fig.tight_layout()
    path = os.path.join(os.fspath(directory), PLOT_FILES[name])
    fig.savefig(path, dpi=dpi)
    paths.append(path)
  return paths
