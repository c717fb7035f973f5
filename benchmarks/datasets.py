"""Prediction/real AnnData pairs for the side-by-side benchmarks.

- `synthetic_pair`: `P` perturbations named after genes (perturbation `p`
  knocks down its own gene), ~50 cells each plus control cells, log1p
  values with dropouts. Real effects are a shared "popular" response of varying
  strength plus a sparse perturbation-specific part; the "model" predicts each
  perturbation's log-mean with an error, and its cells are sampled the same way
  (with its own control cells).
- `papalexi_pair`: the Papalexi 2021 CRISPR-KO screen (raw counts ->
  log1p counts per 10k); half of each label's cells is the "prediction", the
  other half the "real" data (a technical duplicate, the split-half baseline).

Both files use `obs["perturbation"]` and the control label ``"control"`` /
``"non-targeting"`` and are written as float32 CSR `.h5ad` files.
"""

from __future__ import annotations

import os
from typing import Optional

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

PERTURBATION_KEY = "perturbation"
SYNTHETIC_CONTROL = "control"


def _cells(rng, log_means: np.ndarray, n_cells: np.ndarray) -> sp.csr_matrix:
  """`n_cells[i]` cells around the log-mean row `log_means[i]`, as log1p values.

  Expression `exp(m + 0.6 z) - 0.7` clipped at 0 (a cheap stand-in for count
  noise with dropouts: about half the entries are 0), then log1p, float32.
  """
  rows = np.repeat(np.arange(len(n_cells)), n_cells)
  x = rng.standard_normal((len(rows), log_means.shape[1]), dtype=np.float32)
  x *= 0.6
  x += log_means[rows].astype(np.float32)
  np.exp(x, out=x)
  x -= 0.7
  np.maximum(x, 0.0, out=x)
  return sp.csr_matrix(np.log1p(x, out=x))


def synthetic_pair(
    n_perturbations: int,
    *,
    cells_per_perturbation: int = 50,
    n_genes: int = 2000,
    n_control: Optional[int] = None,
    model_error: float = 3.0,
    seed: int = 0,
) -> tuple[ad.AnnData, ad.AnnData]:
  """A (prediction, real) pair of single-cell AnnData files.

  Args:
    n_perturbations: `P`, at most `n_genes` (perturbation `p` targets gene `p`).
    cells_per_perturbation: mean cells per perturbation (40% to 160% of it).
    n_genes: genes `G`, named ``G0000, G0001, ...``.
    n_control: control cells per file; default `4 * cells_per_perturbation`.
    model_error: standard deviation of the model's error on each log-mean,
      relative to the perturbation-specific effect size.
    seed: seed of everything.

  Returns:
    `(adata_pred, adata_real)`, labels in `obs["perturbation"]` with control
    ``"control"``.
  """
  if n_perturbations > n_genes:
    raise ValueError(f"n_perturbations ({n_perturbations}) must be <= n_genes ({n_genes})")
  rng = np.random.default_rng(seed)
  n_control = 4 * cells_per_perturbation if n_control is None else n_control
  genes = np.asarray([f"G{i:04d}" for i in range(n_genes)])
  labels = genes[:n_perturbations]
  base = rng.normal(-0.3, 0.8, size=n_genes)
  shared = rng.normal(0.0, 0.5, size=n_genes)
  strength = rng.gamma(2.0, 0.5, size=(n_perturbations, 1))
  specific = rng.normal(0.0, 0.3, size=(n_perturbations, n_genes))
  specific *= rng.random((n_perturbations, n_genes)) < 0.1
  effect = strength * shared + specific
  effect[np.arange(n_perturbations), np.arange(n_perturbations)] -= 2.0  # knockdown of the target
  real_means = np.vstack([base, base + effect])  # row 0: control
  pred_means = np.vstack([base, base + effect + rng.normal(0.0, 0.3 * model_error,
                                                            size=effect.shape)])
  obs_labels = np.concatenate([[SYNTHETIC_CONTROL], labels])

  def make(means, stream):
    r = np.random.default_rng([seed, stream])
    n = np.concatenate([[n_control], r.integers(int(0.4 * cells_per_perturbation),
                                                int(1.6 * cells_per_perturbation) + 1,
                                                size=n_perturbations)])
    x = _cells(r, means, n)
    obs = pd.DataFrame({PERTURBATION_KEY: np.repeat(obs_labels, n)},
                       index=[f"cell{i}" for i in range(int(n.sum()))])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes),
                      uns={"perturbation_key": PERTURBATION_KEY,
                           "control_label": SYNTHETIC_CONTROL})

  return make(pred_means, 1), make(real_means, 2)


def papalexi_pair(path: str, *, seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
  """Split-half pair from the Papalexi 2021 file (log1p counts per 10k, float32 CSR).

  Every label's cells (control included) are shuffled with `seed` and split in
  two halves: the first half is the "prediction", the second the "real" data.
  """
  src = ad.read_h5ad(path)
  key = str(src.uns.get("perturbation_key", PERTURBATION_KEY))
  control = str(src.uns.get("control_label", "non-targeting"))
  x = sp.csr_matrix(src.X, dtype=np.float64)
  totals = np.asarray(x.sum(axis=1)).ravel()
  scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
  x = sp.diags(scale) @ x
  x.data = np.log1p(x.data)
  x = sp.csr_matrix(x, dtype=np.float32)
  labels = src.obs[key].astype(str).to_numpy()
  rng = np.random.default_rng(seed)
  first = np.zeros(len(labels), bool)
  for lab in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == lab))
    first[idx[: len(idx) // 2]] = True

  def make(mask):
    obs = pd.DataFrame({PERTURBATION_KEY: labels[mask]}, index=src.obs_names[mask])
    return ad.AnnData(X=x[mask], obs=obs, var=pd.DataFrame(index=src.var_names.astype(str)),
                      uns={"perturbation_key": PERTURBATION_KEY, "control_label": control})

  return make(first), make(~first)


def write_pair(pair, directory: str, name: str) -> tuple[str, str]:
  """Writes `(pred, real)` to `directory/name_{pred,real}.h5ad`; returns the paths."""
  os.makedirs(directory, exist_ok=True)
  paths = (os.path.join(directory, f"{name}_pred.h5ad"), os.path.join(directory, f"{name}_real.h5ad"))
  for adata, p in zip(pair, paths):
    adata.write_h5ad(p)
  return paths
