"""The task suite of the soft-AUC-F1 training study (`bench_soft_training.py`).

Every task has held-out perturbations in two disjoint sets: validation (early
stopping) and test (the reported numbers). Targets are response profiles
relative to the control (deltas), so "Pearson of deltas" is the Pearson
correlation of a prediction with its target. A seed draws a fresh task
(toy, simulator) or a fresh compound split (LINCS); all seeds of a task have
the same shapes, so the training runs of one loss are vmapped over seeds.

- ``toy``: `tb.datasets.make_toy_task` (inputs: 16-d descriptors; profiles over 128
  genes; its control is 0), tanh MLP.
- ``sim_linear`` / ``sim_mlp``: `tb.datasets.simulate_perturbations` pseudobulks minus
  the control mean; inputs `effects @ W * 3 + 0.1·noise` (32-d, as in issue
  14), a linear model and a tanh MLP.
- ``lincs``: LINCS L1000 A375 (``../shared/data/lincs_l1000_a375``): a
  compound's level-4 z-score profile at its highest dose, minus the DMSO
  wells' mean, predicted from its profiles at the next two lower doses (each
  projected on the top 16 principal components of the training compounds'
  lower-dose profiles: 32 inputs); held-out compounds; linear model.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import twinbench_jax as tb

LINCS_PATH = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lincs_l1000_a375"
              / "l1000_ljp005_a375_24h.h5ad")


class Split(NamedTuple):
  """Inputs `[N, D]` and target deltas `[N, G]` of one set of perturbations."""
  x: jax.Array
  y: jax.Array


class TaskData(NamedTuple):
  """One draw of a task; every field gets a leading seed axis when stacked."""
  train: Split
  val: Split
  test: Split


class Task(NamedTuple):
  name: str
  model: str          # "linear" or "mlp"
  data: TaskData      # stacked over seeds: [S, N, ...]
  description: str


def _standardise(train_x, *others):
  mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
  return [(a - mu) / sd for a in (train_x, *others)]


def _split3(x, y, n_train, n_val, n_test, order):
  parts = np.split(order[:n_train + n_val + n_test], [n_train, n_train + n_val])
  xs = _standardise(*[x[p] for p in parts])
  return TaskData(*[Split(jnp.asarray(a, jnp.float32), jnp.asarray(y[p], jnp.float32))
                    for a, p in zip(xs, parts)])


def toy(seed: int, n_train=512, n_val=64, n_test=64) -> TaskData:
  t = tb.datasets.make_toy_task(jax.random.key(1000 + seed), n_train=n_train, n_test=n_val + n_test)
  x = np.concatenate([t.train_inputs, t.test_inputs])
  y = np.concatenate([t.train_profiles, t.test_profiles])
  return _split3(x, y, n_train, n_val, n_test, np.arange(len(x)))


def simulator(seed: int, n_train=200, n_val=50, n_test=50, n_genes=200, n_cells=20,
              n_features=32) -> TaskData:
  n = n_train + n_val + n_test
  k_sim, k_w, k_noise = jax.random.split(jax.random.key(2000 + seed), 3)
  sim = tb.datasets.simulate_perturbations(k_sim, n_perturbations=n, n_genes=n_genes, n_cells=n_cells)
  y = np.asarray(sim.pseudobulk() - sim.control_cells.mean(0))
  w = jax.random.normal(k_w, (n_genes, n_features)) / np.sqrt(n_genes)
  x = np.asarray(sim.effects @ w * 3 + 0.1 * jax.random.normal(k_noise, (n, n_features)))
  return _split3(x, y, n_train, n_val, n_test, np.arange(n))


def load_lincs(path: Path = LINCS_PATH):
  """`(x [59, 2G], y [59, G])`: per compound, the two doses below its highest, and the highest."""
  import anndata

  if not path.is_file():
    raise FileNotFoundError(f"LINCS A375 file not found at {path} (expected in ../shared/data)")
  a = anndata.read_h5ad(path)
  z = np.asarray(a.layers["zscore"], np.float64)
  obs = a.obs
  control = z[np.asarray(obs["is_control"], bool)].mean(0)
  xs, ys = [], []
  for name in sorted(set(obs.loc[~obs["is_control"].astype(bool), "perturbation"])):
    idx = np.flatnonzero(np.asarray(obs["perturbation"] == name))
    idx = idx[np.argsort(np.asarray(obs["dose_um"])[idx])]
    d = z[idx] - control
    xs.append(np.concatenate([d[-2], d[-3]]))
    ys.append(d[-1])
  return np.asarray(xs), np.asarray(ys)


def lincs(seed: int, n_train=35, n_val=12, n_test=12, n_components=16, arrays=None) -> TaskData:
  """A random split of the compounds; inputs: each lower dose on `n_components` PCs.

  The principal components are fitted on the training compounds' lower-dose
  profiles only (both doses pooled), so held-out compounds stay unseen; the
  input is `2 * n_components` wide (the raw 2 x 978 input made every null
  replicate of the evaluation cost as much as the rest of the study).
  """
  x, y = load_lincs() if arrays is None else arrays
  order = np.random.default_rng(3000 + seed).permutation(len(x))
  g = y.shape[1]
  pooled = x[order[:n_train]].reshape(-1, g)
  centre = pooled.mean(0)
  _, _, vt = np.linalg.svd(pooled - centre, full_matrices=False)
  proj = ((x.reshape(len(x), 2, g) - centre) @ vt[:n_components].T).reshape(len(x), -1)
  return _split3(proj, y, n_train, n_val, n_test, order)


def stack(draws) -> TaskData:
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *draws)


def build(names, seeds, sizes) -> list[Task]:
  """The tasks in `names`, each drawn once per seed and stacked."""
  tasks = []
  lincs_arrays = load_lincs() if "lincs" in names else None
  for name in names:
    if name == "toy":
      data = stack([toy(s, **sizes.get("toy", {})) for s in seeds])
      tasks.append(Task("toy", "mlp", data, "`tb.datasets.make_toy_task`, tanh MLP (64 hidden)"))
    elif name in ("sim_linear", "sim_mlp"):
      data = stack([simulator(s, **sizes.get("sim", {})) for s in seeds])
      model = name.split("_")[1]
      tasks.append(Task(name, model, data, f"simulator, inputs `effects @ W * 3 + 0.1 noise`, "
                        f"{'linear model' if model == 'linear' else 'tanh MLP (64 hidden)'}"))
    elif name == "lincs":
      data = stack([lincs(s, arrays=lincs_arrays, **sizes.get("lincs", {})) for s in seeds])
      tasks.append(Task("lincs", "linear", data, "LINCS L1000 A375 (59 compounds): z-score "
                        "profile minus DMSO at the highest dose from the two lower doses (16 "
                        "PCs each), 35 train / 12 validation / 12 test compounds, linear model"))
    else:
      raise ValueError(f"unknown task {name!r}")
  return tasks
