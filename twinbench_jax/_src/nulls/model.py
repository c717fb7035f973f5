"""The model-in-the-loop null: predict again from randomised inputs, `B` times (SPEC §3).

"If a model doesn't use the information in its input, removing it won't change
its predictions." A replicate whose prediction for query `q` equals the real
prediction bit for bit is an exact tie for that query (its null scores are set
to the observed ones), so a model that ignores its input gets `p = 1`
regardless of floating-point reassociation between differently batched
computations.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import PartitionSpec

from twinbench_jax._src.core import validation
from twinbench_jax._src.nulls import checks
from twinbench_jax._src.nulls import predict as predict_lib
from twinbench_jax._src.nulls import query_model
from twinbench_jax._src.nulls import randomize as randomize_lib
from twinbench_jax._src.nulls import result as result_lib
from twinbench_jax._src.nulls import scoring
from twinbench_jax._src.nulls import sharding
from twinbench_jax._src.nulls import streaming
from twinbench_jax._src.nulls.result import NullResult


@functools.partial(jax.jit, static_argnames=("apply", "randomize", "settings"))
def _model_chunk(start, n_null, key, params, inputs, x_obs, own_obs, s_obs, ctx, *,
                 apply, randomize, settings: streaming.KernelSettings):
  """Replicates `start .. start + chunk - 1`: randomise, predict, score, count."""

  def local(start, n_null, key, params, inputs, x_obs, own_obs, s_obs, ctx):
    first = start + jax.lax.axis_index(sharding.AXIS) * settings.per_device

    def make_batch(offset, idx):
      del offset
      return jax.vmap(lambda i: apply(params, randomize(jax.random.fold_in(key, i), inputs)))(
          idx)

    return streaming.score_device_share(first, n_null, make_batch, x_obs, own_obs, s_obs, ctx,
                                        settings=settings)

  rep = PartitionSpec()
  out = sharding.shard_map(local, mesh=settings.mesh, in_specs=(rep,) * 9,
                           out_specs=streaming.out_specs(settings.candidate_level))(
                               start, n_null, key, params, inputs, x_obs, own_obs, s_obs, ctx)
  return streaming.replicate_outputs(out, settings.mesh)


def model_null(
    predict_fn: Callable[[Any], jax.Array],
    inputs: Any,
    references: jax.Array,
    relevance: Optional[jax.Array] = None,
    *,
    key: jax.Array,
    n_null: int = 1000,
    randomize: Union[str, Callable[[jax.Array, Any], Any]] = "shuffle_features",
    leaves: Optional[Sequence[str]] = None,
    metric: str = "sqeuclidean",
    own_score: str = "similarity",
    candidate_level: bool = False,
    chunk_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    devices: Optional[Sequence[Any]] = None,
    progress: bool = True,
    module_mode: str = "eval",
    mesh: Optional[Any] = None,
) -> NullResult:
  r"""Model-in-the-loop permutation null: predict again from randomised inputs (SPEC §3).

  Replicate `b = 0 .. B-1` predicts from
  `randomize(jax.random.fold_in(key, b), inputs)`; with `m_q^b` its own score
  and `s^b` its similarities,

  .. math::
     p_q = \frac{1 + \#\{b : m_q^b \ge m_q\}}{B + 1}, \qquad
     p_{qc} = \frac{1 + \#\{b : s^b_{qc} \ge s_{qc}\}}{B + 1}.

  A model whose output ignores its input gets `p = 1` everywhere (AUC-F1 = 0);
  one that depends strongly on it gets `p = 1/(B+1)`.

  Replicates run in chunks of `chunk_size` through one compiled kernel: each
  of the `devices` takes its share of a chunk and loops over it in vmapped
  batches of `batch_size` replicates. Only the `[B, Q]` null own scores and
  `[Q, C]` int32 exceedance counts are kept. Replicate `b` always lands in the
  batch `[k * batch_size, (k + 1) * batch_size)` with the same compiled
  arithmetic, so results are bit-identical for any `chunk_size` and any number
  of devices (`batch_size` may change the last bit of the null scores, as
  XLA sums differently batched products in a different order). On a GPU, XLA
  autotunes each compilation and may pick another matmul algorithm for
  another `chunk_size`; set ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``
  where the last bits must match across chunk sizes.

  Several processes (hosts): after `jax.distributed.initialize()` every
  process runs this same call with the same full inputs (host-local arrays,
  identical everywhere; checked through the observed own scores). The
  replicates are split over the devices of all processes, and every process
  gets the whole `NullResult` back as ordinary arrays, bit-identical to one
  process's (replicate `b` keeps its key and batch; only its device changes).

  Args:
    predict_fn: JAX-traceable `inputs -> [Q, G]` predictions: a plain function,
      `functools.partial(apply, params)` (the arrays among its arguments are
      traced, not compiled in), or a Flax NNX module (see `module_mode`). Must
      be deterministic. The factories' `predict_fn(params, inputs)` is passed
      as `functools.partial(predict_fn, params)`.
    inputs: an array or a pytree of arrays (e.g. ``{"control": ..., "embedding":
      ...}``); must be finite.
    references: `[C, G]` real candidate profiles.
    relevance: `[Q, C]` boolean; default: the identity (`Q == C`).
    key: a `jax.random` key; the same key gives bit-identical results.
    n_null: number of null replicates `B >= 1`.
    randomize: ``"shuffle_features"`` (permute the entries of each input row,
      independently per row and replicate), ``"permute_rows"`` (swap inputs
      between queries), or a callable `(key, inputs) -> inputs` that keeps every
      leaf's shape and dtype.
    leaves: names of the input leaves to randomise (dict keys, attribute names
      or `jax.tree_util.keystr` paths); None: all. Built-in randomisers only.
    metric: similarity metric (see `tb.similarity`).
    own_score: ``"similarity"`` (mean similarity to the relevant candidates,
      SPEC §1), ``"r2"`` or ``"pearson"`` (of the prediction against the mean
      of its relevant references).
    candidate_level: also compute `[Q, C]` entry-wise p-values from streamed
      exceedance counts (costs a `[Q, G] x [G, C]` matmul per replicate).
    chunk_size: replicates per kernel call (one progress-bar step) over all
      devices, rounded up to a multiple of `batch_size` times the device count;
      None: about a tenth of `n_null`.
    batch_size: replicates vmapped together on a device, the unit of working
      memory; None: as many as fit in about 256 MiB on a CPU, or a sixteenth of
      an accelerator's memory (at most 64, at most `B`).
    devices: devices to split replicates over; None: `jax.devices()` (in a
      `jax.distributed` job, those of every process).
    mesh: instead of `devices`, a `jax.sharding.Mesh` with a ``"queries"``
      axis (`tb.query_mesh()`), and optionally a ``"replicates"`` axis
      (e.g. ``Mesh(devs.reshape(r, q), ("replicates", "queries"))``): the
      queries are split over ``"queries"`` (`Q` a multiple of its size) and
      the replicates over ``"replicates"``. Each device then holds `Q/q` rows
      of the observed similarities and of the streamed counts (memory
      O(Q C / q)); every device of a query group predicts whole batches, as
      with `devices`, and the replicates' rows are exchanged. Results equal
      the `devices` ones (bit for bit where XLA rounds a row block as the
      whole matrix, see `query_sharding`); `scores` and `candidate_pvalues`
      come back split by rows over the mesh. Not with `metric` ``"euclidean"``
      or ``"l1"`` and several relevant candidates per query.
    progress: show a progress bar over chunks (on a terminal; in a
      `jax.distributed` job, process 0's only).
    module_mode: for a Flax NNX `predict_fn`: ``"eval"`` (default) runs an
      eval-mode copy (`Module.eval()`: Dropout off, BatchNorm on its running
      averages), the usual way to evaluate; ``"as_is"`` runs the module as it
      is set. In train mode every replicate then uses the Dropout masks of
      the real pass (the module's RNG streams as they stand, so the real and
      the randomised inputs differ only in the input, and a model that ignores
      its input still ties exactly) and BatchNorm normalises each replicate
      with its own batch statistics. Either way the module is not changed: no
      RNG count advances, no running average moves.

  Returns:
    A `NullResult` with `kind="model"`.

  Example:
    >>> import jax, jax.numpy as jnp, twinbench_jax as tb
    >>> x = jax.random.normal(jax.random.key(0), (20, 50))
    >>> res = tb.model_null(lambda v: 2.0 * v, x, 2.0 * x, key=jax.random.key(1),
    ...                     n_null=99, progress=False)
    >>> round(float(res.pvalues.max()), 6)  # 1 / (B + 1): every query uses its input
    0.01
  """
  key = checks.check_key(key)
  n_null = checks.check_n_null(n_null)
  checks.check_options(metric, own_score)
  inputs = checks.check_inputs(inputs)
  y, rel = checks.check_references(references, relevance)
  apply, params = predict_lib.split_predict(predict_fn, module_mode)
  rand_spec = None if leaves is None else tuple([leaves] if isinstance(leaves, str) else leaves)
  randomize_lib.resolve_randomizer(randomize, leaves=rand_spec)  # validates the spec
  rand = predict_lib.Randomizer(randomize, rand_spec)
  checks.check_predict_output(apply, params, inputs, y, rel)
  checks.check_randomizer(rand, key, inputs)

  if mesh is not None:
    if devices is not None:
      raise ValueError("pass `devices` or `mesh`, not both")
    return query_model.run(apply, params, inputs, rand, key, n_null, y, rel,
                           mesh=query_model.check_mesh(mesh), metric=metric,
                           own_score=own_score, candidate_level=candidate_level,
                           chunk_size=chunk_size, batch_size=batch_size, progress=progress)
  mesh = sharding.replicate_mesh(devices)
  q, c, g = rel.shape[0], y.shape[0], y.shape[1]
  layout = sharding.chunk_layout(n_null, mesh.size, chunk_size, batch_size,
                                 streaming.bytes_per_replicate(q, c, g, candidate_level, inputs),
                                 batch_bytes=sharding.batch_bytes(mesh.devices.ravel()))
  x_obs = predict_lib.predict_observed(params, inputs, key, apply=apply, randomize=rand, batch=layout.batch)
  validation.check_no_nan(x_obs, "predict_fn(inputs)")
  x_obs, y, mode, ctx, own_obs, s_obs = scoring.observed(x_obs, y, rel, metric, own_score)
  sharding.check_same_on_processes(
      (key if key.dtype == np.uint32 else jax.random.key_data(key),
       np.array((n_null,) + tuple(layout)), own_obs),
      "`key`, `n_null` or the observed own scores (from `predict_fn`, `inputs`, `references`, "
      "`relevance`)")
  args = sharding.replicated(
      (key, params, inputs, x_obs, own_obs, s_obs if candidate_level else None, ctx), mesh)
  settings = streaming.KernelSettings(mesh, layout.per_device, layout.batch, metric, mode,
                                     candidate_level)
  kernel = functools.partial(_model_chunk, apply=apply, randomize=rand, settings=settings)
  n_arr = np.int32(n_null)

  def run_chunk(i):
    return kernel(np.int32(i * layout.chunk), n_arr, *args)

  null_own, counts, bad = streaming.stream(layout.n_chunks, run_chunk, progress, "model null")
  if bad:
    raise ValueError(
        f"`predict_fn` returned non-finite predictions (NaN or inf) for {bad} of the {n_null} "
        "randomised inputs; a null replicate must be finite (check the model on inputs "
        "randomised with `randomize`)")
  return result_lib.finish("model", own_obs, null_own, counts, s_obs, rel, n_null, metric, own_score)
