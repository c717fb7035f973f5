"""Building the `[Q, C]` relevance matrix from labels (SPEC §1)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def relevance_from_labels(query_labels: Sequence, candidate_labels: Sequence) -> jnp.ndarray:
  """`rel[q, c] = query_labels[q] == candidate_labels[c]`, checked so every query has a match.

  Args:
    query_labels: `[Q]` perturbation label of each prediction.
    candidate_labels: `[C]` perturbation label of each real profile.

  Returns:
    `[Q, C]` boolean relevance.

  Raises:
    ValueError: naming the query labels that no candidate carries.
    TypeError: for traced labels (inside `jit`): labels are host data (often
      strings) and the every-query-has-a-match check needs their values, so
      build the relevance outside `jit` and pass it in.
  """
  for name, labels in (("query_labels", query_labels), ("candidate_labels", candidate_labels)):
    if isinstance(labels, jax.core.Tracer):
      raise TypeError(
          f"`{name}` is traced (inside `jit`/`vmap`); `relevance_from_labels` needs concrete "
          "labels: build the relevance outside the transformed function and pass it in.")
  q = np.asarray(query_labels)
  c = np.asarray(candidate_labels)
  if q.ndim != 1 or c.ndim != 1:
    raise ValueError(f"labels must be 1-D, got query_labels {q.shape} and "
                     f"candidate_labels {c.shape}")
  rel = q[:, None] == c[None, :]
  missing = q[~rel.any(axis=1)]
  if missing.size:
    shown = sorted({str(m) for m in missing})
    raise ValueError(
        f"{len(shown)} query label(s) have no candidate with the same label: "
        f"{shown[:10]}{' ...' if len(shown) > 10 else ''}")
  return jnp.asarray(rel)
