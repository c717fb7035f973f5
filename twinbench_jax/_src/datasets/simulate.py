"""A small built-in simulator of a perturbation screen (the `twinbench demo` data).

Each perturbation's mean response is a large shared "popular" response (what
every perturbation does, e.g. stress) plus a smaller perturbation-specific
effect on a few genes. Cells add Gaussian noise around their perturbation's
mean. A model that predicts the popular response for every perturbation looks
good on per-gene error but carries no information about the input.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class SimulatedData(NamedTuple):
  """Simulated single cells and the truth behind them.

  Attributes:
    control_cells: `[n_control, G]` expression of control cells.
    cells: `[P * n_cells, G]` expression of perturbed cells.
    labels: `[P * n_cells]` int perturbation index of each perturbed cell.
    baseline: `[G]` control mean expression.
    popular: `[G]` the response shared by every perturbation.
    effects: `[P, G]` the perturbation-specific part of each response.
    true_means: `[P, G]` `baseline + popular + effects`: the noise-free profiles.
  """

  control_cells: jax.Array
  cells: jax.Array
  labels: jax.Array
  baseline: jax.Array
  popular: jax.Array
  effects: jax.Array
  true_means: jax.Array

  @property
  def n_perturbations(self) -> int:
    return int(self.effects.shape[0])

  def pseudobulk(self) -> jax.Array:
    """`[P, G]` mean of the observed cells of each perturbation."""
    p = self.n_perturbations
    sums = jax.ops.segment_sum(self.cells, self.labels, num_segments=p)
    counts = jax.ops.segment_sum(jnp.ones_like(self.labels, self.cells.dtype), self.labels,
                                 num_segments=p)
    return sums / counts[:, None]


def simulate_perturbations(
    key: jax.Array,
    *,
    n_perturbations: int = 40,
    n_genes: int = 200,
    n_cells: int = 30,
    n_control: int = 100,
    popular_scale: float = 3.0,
    specific_scale: float = 1.0,
    genes_per_effect: int = 10,
    noise: float = 1.0,
) -> SimulatedData:
  """Simulates a perturbation screen with a shared popular response.

  Args:
    key: PRNG key; the same key gives the same data.
    n_perturbations: number of perturbations `P`.
    n_genes: number of genes `G`.
    n_cells: cells per perturbation.
    n_control: control cells.
    popular_scale: size of the shared response (per-gene standard deviation).
    specific_scale: size of each perturbation's own effect on its genes.
    genes_per_effect: genes moved by each perturbation's own effect.
    noise: per-cell Gaussian noise.

  Returns:
    A `SimulatedData`.
  """
  for name, value in (("n_perturbations", n_perturbations), ("n_genes", n_genes),
                      ("n_cells", n_cells), ("n_control", n_control),
                      ("genes_per_effect", genes_per_effect)):
    if int(value) < 1:
      raise ValueError(f"`{name}` must be >= 1, got {value}")
  if genes_per_effect > n_genes:
    raise ValueError(f"`genes_per_effect` ({genes_per_effect}) exceeds `n_genes` ({n_genes})")
  k_base, k_pop, k_genes, k_eff, k_ctrl, k_cells = jax.random.split(key, 6)
  baseline = 5.0 + jax.random.normal(k_base, (n_genes,))
  popular = popular_scale * jax.random.normal(k_pop, (n_genes,))
  # Each perturbation moves its own random subset of genes.
  order = jnp.argsort(jax.random.uniform(k_genes, (n_perturbations, n_genes)), axis=1)
  on = jnp.argsort(order, axis=1) < genes_per_effect
  effects = jnp.where(on, specific_scale * jax.random.normal(k_eff, (n_perturbations, n_genes)),
                      0.0)
  true_means = baseline + popular + effects
  control_cells = baseline + noise * jax.random.normal(k_ctrl, (n_control, n_genes))
  labels = jnp.repeat(jnp.arange(n_perturbations), n_cells)
  cells = true_means[labels] + noise * jax.random.normal(k_cells, (labels.shape[0], n_genes))
  return SimulatedData(control_cells, cells, labels, baseline, popular, effects, true_means)
