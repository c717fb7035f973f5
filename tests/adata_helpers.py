"""Small synthetic AnnData pairs for the AnnData-layer tests (profiles, evaluate, CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_real(*, n_perturbations=8, n_cells=12, n_control=20, n_genes=25, seed=0, counts=False,
              labels=None):
  """Real cells: `n_cells` per perturbation `p0..`, plus `n_control` cells labelled 'control'.

  Returns the AnnData and the `[P + 1, G]` true means (control last).
  """
  import anndata

  rng = np.random.default_rng(seed)
  names = labels or [f"p{i}" for i in range(n_perturbations)]
  means = np.abs(rng.normal(3.0, 2.0, size=(len(names) + 1, n_genes)))
  sizes = [n_cells] * len(names) + [n_control]
  group = np.repeat(np.arange(len(names) + 1), sizes)
  if counts:
    x = rng.poisson(means[group]).astype(np.float32)
  else:
    x = (means[group] + rng.normal(size=(group.size, n_genes))).astype(np.float32)
  all_names = names + ["control"]
  obs = pd.DataFrame({"perturbation": pd.Categorical([all_names[g] for g in group])},
                     index=[f"cell{i}" for i in range(group.size)])
  var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
  return anndata.AnnData(x, obs=obs, var=var), means


def make_pred(profiles, labels, genes, *, key="perturbation"):
  """One row per perturbation."""
  import anndata

  obs = pd.DataFrame({key: pd.Categorical(list(labels))},
                     index=[f"pred{i}" for i in range(len(labels))])
  return anndata.AnnData(np.asarray(profiles, np.float32), obs=obs,
                         var=pd.DataFrame(index=list(genes)))


def pseudobulk_numpy(x, labels, order):
  """Plain numpy per-label mean, rows in `order` (the reference for the streaming code)."""
  x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, np.float64)
  labels = np.asarray(labels)
  return np.stack([x[labels == lab].mean(axis=0) for lab in order])


def good_pred(real, means, *, noise=0.3, seed=1):
  """A prediction close to each perturbation's true mean (control excluded)."""
  rng = np.random.default_rng(seed)
  labels = [c for c in real.obs["perturbation"].cat.categories if c != "control"]
  order = [int(c[1:]) for c in labels]
  prof = means[order] + noise * rng.normal(size=(len(labels), means.shape[1]))
  return make_pred(prof, labels, real.var_names)
