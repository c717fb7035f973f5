r"""A small synthetic training task where mean-squared error drifts toward the mean response.

Each perturbation `p` has an input descriptor `z_p` (what a model sees: e.g.
an embedding of the perturbed gene) and a response profile

.. math:: y_p = \mathrm{popular} + \mathrm{specific}(z_p) + \varepsilon_p

over `G` genes: a large response shared by every perturbation, a smaller
perturbation-specific part on a few genes that is a fixed nonlinear function
of the input, and observation noise. The specific part is learnable from `z`,
but the squared error is dominated by the shared part and the noise, and
hedging toward the mean response lowers it on unseen perturbations. Shrunk
predictions are ranked by how "average" each candidate looks, not by their
own input: every query sends its top rank to the same few candidates, the mode
collapse that TwinBench scores ≈ 0 (SPEC §2, §4). With the defaults, the
noise-free truth ranks its held-out candidate first for about 97% of queries,
the truth's specific part shrunk by half for about 40%.

A tiny pure-JAX MLP (`toy_mlp_init`, `toy_mlp_predict`) comes with it, so the
tests and `examples/train_auxiliary_loss.py` train the same model.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp

from twinbench_jax._src.core import checks


class ToyTask(NamedTuple):
  """Train and held-out perturbations of the synthetic task.

  Attributes:
    train_inputs: `[P_train, D]` input descriptors of the training perturbations.
    train_profiles: `[P_train, G]` their observed (noisy) response profiles:
      the regression targets and the candidates of the training loss.
    test_inputs: `[P_test, D]` input descriptors of held-out perturbations.
    test_profiles: `[P_test, G]` their observed profiles: the candidates that
      held-out predictions are ranked against (query `q` ↔ candidate `q`).
    popular: `[G]` the response shared by every perturbation.
    train_specific: `[P_train, G]` noise-free specific parts (diagnostics).
    test_specific: `[P_test, G]` noise-free specific parts (diagnostics).
  """

  train_inputs: jax.Array
  train_profiles: jax.Array
  test_inputs: jax.Array
  test_profiles: jax.Array
  popular: jax.Array
  train_specific: jax.Array
  test_specific: jax.Array


def make_toy_task(
    key: jax.Array,
    *,
    n_train: int = 512,
    n_test: int = 64,
    n_features: int = 16,
    n_genes: int = 128,
    popular_scale: float = 3.0,
    specific_scale: float = 2.0,
    noise: float = 0.5,
    threshold: float = 1.0,
) -> ToyTask:
  r"""Builds the synthetic task (see the module docstring).

  With `z ~ N(0, I_D)` and a random `W` `[D, G]` with unit-variance columns
  `z·w_g`, the specific part is the thresholded projection
  `specific(z)_g = specific_scale · max(z·w_g - threshold, 0)`: gene `g`
  responds only to the inputs that point along `w_g` (about 16% of the genes
  per perturbation at `threshold = 1`). The popular part has per-gene standard
  deviation `popular_scale`; the noise is i.i.d. Gaussian with standard
  deviation `noise`. Train and test perturbations are independent draws.

  Args:
    key: PRNG key; the same key gives the same task.
    n_train: training perturbations.
    n_test: held-out perturbations.
    n_features: input dimension `D`.
    n_genes: profile dimension `G`.
    popular_scale: size of the shared response.
    specific_scale: size of the perturbation-specific response.
    noise: observation noise of each profile.
    threshold: how far along `w_g` an input must point before gene `g`
      responds (larger: fewer responding genes).

  Returns:
    A `ToyTask`.
  """
  for name, value in (("n_train", n_train), ("n_test", n_test), ("n_features", n_features),
                      ("n_genes", n_genes)):
    checks.check_positive_int(value, name)
  for name, value in (("popular_scale", popular_scale), ("specific_scale", specific_scale),
                      ("noise", noise)):
    if not value >= 0:
      raise ValueError(f"`{name}` must be >= 0, got {value!r}")
  k_pop, k_w, k_z, k_noise = jax.random.split(key, 4)
  n = n_train + n_test
  popular = popular_scale * jax.random.normal(k_pop, (n_genes,))
  w = jax.random.normal(k_w, (n_features, n_genes)) / jnp.sqrt(n_features)
  z = jax.random.normal(k_z, (n, n_features))
  # Gene g responds when the input's projection on w_g passes `threshold`:
  # each perturbation moves a few genes, which ones depends on its input.
  specific = specific_scale * jax.nn.relu(z @ w - threshold)
  profiles = popular + specific + noise * jax.random.normal(k_noise, (n, n_genes))
  return ToyTask(
      train_inputs=z[:n_train], train_profiles=profiles[:n_train],
      test_inputs=z[n_train:], test_profiles=profiles[n_train:], popular=popular,
      train_specific=specific[:n_train], test_specific=specific[n_train:])


def toy_mlp_init(key: jax.Array, n_in: int, n_hidden: int, n_out: int, *,
                 output_bias: Optional[jax.Array] = None,
                 output_scale: float = 1.0) -> Dict[str, jax.Array]:
  """Parameters of a one-hidden-layer tanh MLP `x -> tanh(x W1 + b1) W2 + b2`.

  Args:
    key: PRNG key.
    n_in: input dimension.
    n_hidden: hidden units.
    n_out: output dimension (genes).
    output_bias: `[n_out]` initial `b2` (default zeros); with a small
      `output_scale` and `output_bias` set to the mean profile, the model starts
      (near) collapsed: it predicts the mean response whatever the input.
    output_scale: multiplies the default (LeCun-normal) initialisation of `W2`.

  Returns:
    A dict of arrays ``{"w1", "b1", "w2", "b2"}``.
  """
  k1, k2 = jax.random.split(key)
  b2 = jnp.zeros((n_out,)) if output_bias is None else jnp.asarray(output_bias, jnp.float32)
  if b2.shape != (n_out,):
    raise ValueError(f"`output_bias` must have shape ({n_out},), got {tuple(b2.shape)}")
  return {
      "w1": jax.random.normal(k1, (n_in, n_hidden)) / jnp.sqrt(n_in),
      "b1": jnp.zeros((n_hidden,)),
      "w2": output_scale * jax.random.normal(k2, (n_hidden, n_out)) / jnp.sqrt(n_hidden),
      "b2": b2,
  }


def toy_mlp_predict(params: Dict[str, jax.Array], inputs: jax.Array) -> jax.Array:
  """`[N, n_in] -> [N, n_out]` predictions of the `toy_mlp_init` MLP."""
  hidden = jnp.tanh(inputs @ params["w1"] + params["b1"])
  return hidden @ params["w2"] + params["b2"]
