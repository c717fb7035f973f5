"""Building the `[Q, C]` relevance matrix from labels (SPEC §1)."""

from __future__ import annotations

from typing import Sequence

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
  """
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
