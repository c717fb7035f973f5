"""Scoring null replicates: own scores, exact ties, candidate-level exceedances (SPEC §1, §3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from twinbench_jax._src.core import own_scores as own_lib
from twinbench_jax._src.core import similarity as similarity_lib
from twinbench_jax._src.core import validation


def _row_checks(xb: jax.Array, x_obs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`([b, Q] row equals the observed row, [b] replicate is finite)` for `xb` `[b, Q, G]`.

  Both counts come from one variadic reduction: a single pass over the batch,
  where separate `all`s cost XLA's CPU backend three times as much.
  """
  n_diff, n_bad = jax.lax.reduce(
      ((xb != x_obs).astype(jnp.int32), (~jnp.isfinite(xb)).astype(jnp.int32)),
      (np.int32(0), np.int32(0)), lambda a, b: (a[0] + b[0], a[1] + b[1]), (2,))
  return n_diff == 0, jnp.all(n_bad == 0, axis=1)


def _replicate_scores(x, s, same, own_obs, s_obs, ctx, *, mode, candidate_level):
  """One replicate `x` `[Q, G]` with similarities `s` `[Q, C]` (or None when not needed)
  and `same` `[Q]` (row equals the observed one): null own scores `[Q]` and,
  candidate level, `s^b >= s` `[Q, C]`."""
  own = own_lib.own_from_context(x, s, ctx, mode=mode)
  # A prediction that did not change is an exact tie, whatever the rounding.
  own = jnp.where(same, own_obs, own)
  if not candidate_level:
    return own, None
  s = jnp.where(same[:, None], s_obs, s)
  return own, validation.nan_to_neg_inf(s) >= validation.nan_to_neg_inf(s_obs)


def score_batch(xb, valid, x_obs, own_obs, s_obs, ctx, *, metric, mode, candidate_level):
  """A batch `xb` `[b, Q, G]` of null predictions -> a dict of

  - ``own``: `[b, Q]` null own scores,
  - ``bad``: number of valid replicates with a non-finite prediction,
  - ``counts`` (candidate level): `[Q, C]` int32 exceedance counts of the valid replicates.
  """
  xb = xb.astype(x_obs.dtype)
  s = None
  if candidate_level or own_lib.needs_scores(mode):
    # Rows are scored independently, so the whole batch is one `[b*Q, G] x [G, C]`
    # similarity: one large matmul, and no vmap around the core's data-dependent
    # branches (under vmap a `lax.cond` runs both of them).
    b, q, g = xb.shape
    # The near-zero guard is skipped: a replicate row equal to the observed row
    # is already counted as a tie (`_replicate_scores`), and elsewhere a
    # rounding-level difference cannot turn a real difference into a tie.
    s = similarity_lib._similarity(xb.reshape(b * q, g), ctx["y"], metric=metric, exact=False)
    s = s.reshape(b, q, -1)
  same, finite = _row_checks(xb, x_obs)
  score = functools.partial(_replicate_scores, mode=mode, candidate_level=candidate_level)
  own, exceed = jax.vmap(score, in_axes=(0, 0, 0, None, None, None))(
      xb, s, same, own_obs, s_obs, ctx)
  out = {"own": own, "bad": jnp.sum(valid & ~finite, dtype=jnp.int32)}
  if candidate_level:
    out["counts"] = jnp.sum(exceed & valid[:, None, None], axis=0, dtype=jnp.int32)
  return out


@functools.partial(jax.jit, static_argnames=("metric", "mode"))
def observed_scores(x, ctx, *, metric, mode):
  """Observed own scores `[Q]` and similarities `[Q, C]` (those of `tb.similarity`)."""
  s = similarity_lib._similarity(x, ctx["y"], metric=metric)
  return own_lib.own_from_context(x, s, ctx, mode=mode), s


def observed(x_obs, y, rel, metric, own_score):
  """Common dtype, own-score mode and context, observed own scores and similarities."""
  dtype = jnp.result_type(x_obs.dtype, y.dtype)
  x_obs, y = x_obs.astype(dtype), y.astype(dtype)
  mode = own_lib.own_mode(own_score, metric, bool(jnp.all(jnp.sum(rel, axis=1) == 1)))
  ctx = own_lib.own_context(y, rel, mode=mode)
  own_obs, s_obs = observed_scores(x_obs, ctx, metric=metric, mode=mode)
  return x_obs, y, mode, ctx, own_obs, s_obs

