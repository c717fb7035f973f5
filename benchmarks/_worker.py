"""One measurement per process: `python -m benchmarks._worker TASK ARGS_JSON`.

Every measurement that reports peak memory runs in its own process so that
nothing measured earlier (another library, a larger size) inflates it. The
result is printed as one JSON line (the last line of stdout).

Tasks:

- ``cell_eval_scores``: cell-eval's `discrimination_score` on a pair of
  `.h5ad` files (time and peak memory of that call alone, on AnnData already
  in memory), optionally also on cell-eval's own mean baseline.
- ``ours_scores``: the same score rebuilt from twinbench_jax primitives, and
  `tb.evaluate(metric="l1", delta="pred_control", target_genes=...)`, on the
  same files.
- ``pipeline_point``: the exact array pipeline at one size (scaling curve).
- ``null_point``: the model-in-the-loop null of a linear model at one `B`.
- ``devices_point``: the same null on the devices of this process (run with
  `XLA_FLAGS=--xla_force_host_platform_device_count=N`).
- ``batch``: several points of one task in one process (smallest preset).

Only the modules a task needs are imported (the cell-eval task never imports
JAX), so each process's memory is its own library's.
"""

from __future__ import annotations

import json
import sys

from benchmarks import _common


def _read(path):
  import anndata as ad

  return ad.read_h5ad(path)


# ----------------------------------------------------------------------------- cell-eval


def _cell_eval_pair(real, pred, control, pert_col):
  """The pair exactly as `cell-eval run` builds it (log-normal check included)."""
  try:
    from cell_eval._evaluator import _build_anndata_pair
  except ImportError:  # pragma: no cover - other cell-eval versions
    from cell_eval._types import PerturbationAnndataPair as _Pair

    return _Pair(real=real, pred=pred, control_pert=control, pert_col=pert_col)
  return _build_anndata_pair(real=real, pred=pred, control_pert=control, pert_col=pert_col)


def cell_eval_scores(args: dict) -> dict:
  import logging
  import os

  os.environ.setdefault("TQDM_DISABLE", "1")
  logging.disable(logging.WARNING)
  from importlib import metadata

  from cell_eval.metrics import discrimination_score

  control, key = args["control"], args.get("perturbation_key", "perturbation")
  real, pred = _read(args["real"]), _read(args["pred"])
  pair = _cell_eval_pair(real, pred, control, key)
  with _common.PeakMemory() as mem:
    seconds, scores = _common.timed(lambda: discrimination_score(pair))
  # Again: the pseudobulks are now memoized in the pair, so this is the metric step alone.
  metric_seconds, _ = _common.timed(lambda: discrimination_score(pair))
  out = dict(version=metadata.version("cell-eval"), seconds=seconds,
             metric_seconds=metric_seconds, extra_mib=mem.extra_mib, peak_mib=mem.peak_mib,
             scores=scores)
  if args.get("baseline_out"):
    from cell_eval import build_base_mean_adata

    base = build_base_mean_adata(_read(args["real"]), pert_col=key, control_pert=control,
                                 output_path=args["baseline_out"])
    bpair = _cell_eval_pair(_read(args["real"]), base, control, key)
    out["baseline_scores"] = discrimination_score(bpair)
  return out


# ----------------------------------------------------------------------------- ours


def ours_scores(args: dict) -> dict:
  import jax
  import numpy as np

  import twinbench_jax as tb
  from benchmarks import cell_eval_compat

  control, key = args["control"], args.get("perturbation_key", "perturbation")
  repeats = int(args.get("repeats", 3))
  real, pred = _read(args["real"]), _read(args["pred"])
  # cell-eval leaves out the gene named like the perturbation: `target_genes`
  # {label: label} does the same in `tb.evaluate` (where this version has it).
  same = cell_eval_compat.evaluate_options(tb.evaluate, real.obs[key], control)

  def reproduce(p=pred):
    return cell_eval_compat.cell_eval_discrimination(p, real, perturbation_key=key,
                                                     control=control)

  def evaluate(p=pred, baselines=()):
    return tb.evaluate(p, real, perturbation_key=key, control=control, baselines=baselines,
                       **same)

  out = dict(x64=bool(jax.config.read("jax_enable_x64")),
             evaluate_target_genes="target_genes" in same)
  with _common.PeakMemory() as mem:
    first, res = _common.timed(reproduce)
    warm = _common.median_time(reproduce, repeats)
  # The metric step alone (distances, ranks, scores) from the deltas.
  metric = lambda: cell_eval_compat.discrimination_from_deltas(
      res.pred_deltas, res.real_deltas, res.labels, real.var_names).scores
  out["metric_s"] = _common.median_time(metric, repeats)
  out["dtype"] = str(res.distances.dtype)
  out.update(reproduce_first_s=first, reproduce_s=warm, reproduce_extra_mib=mem.extra_mib,
             labels=res.labels.tolist(), scores=res.scores.tolist(), ranks=res.ranks.tolist(),
             centroid_distance=cell_eval_compat.distance_to_centroid(res.real_deltas).tolist())
  # Near-ties: the gap between the truth's distance and the closest other one.
  d = res.distances
  own = np.diagonal(d)
  other = np.where(np.eye(len(own), dtype=bool), np.inf, np.abs(d - own[:, None]))
  out["min_relative_gap"] = (other.min(axis=1) / np.maximum(own, 1e-30)).tolist()
  if args.get("evaluate", True):
    with _common.PeakMemory() as mem:
      first, rep = _common.timed(evaluate)
      warm = _common.median_time(evaluate, repeats)
    table = rep.per_perturbation
    out.update(evaluate_first_s=first, evaluate_s=warm, evaluate_extra_mib=mem.extra_mib,
               evaluate_auc_f1=float(rep.auc_f1), evaluate_hit_at_1=float(rep.hit_at_1),
               evaluate_ranks=dict(zip(table["perturbation"].astype(str), table["rank"].astype(float))),
               evaluate_pvalues=dict(zip(table["perturbation"].astype(str),
                                         table["pvalue"].astype(float))))
  if args.get("baseline"):
    base = _read(args["baseline"])
    bres = reproduce(base)
    brep = evaluate(base, baselines=("mean",))
    bt = brep.per_perturbation
    out.update(baseline_scores=bres.scores.tolist(), baseline_labels=bres.labels.tolist(),
               baseline_auc_f1=float(brep.auc_f1), baseline_hit_at_1=float(brep.hit_at_1),
               baseline_pvalues=dict(zip(bt["perturbation"].astype(str), bt["pvalue"].astype(float))),
               builtin_mean_auc_f1=float(brep.baselines["mean"]))
  return out


# ----------------------------------------------------------------------------- scaling


def _data(q, c, g, seed=0):
  import numpy as np

  rng = np.random.default_rng(seed)
  shared = rng.normal(size=g).astype(np.float32) * 3.0
  truth = (shared + rng.normal(size=(c, g))).astype(np.float32)
  pred = (truth[:q] + 0.5 * rng.normal(size=(q, g))).astype(np.float32)
  return pred, truth


def pipeline_point(args: dict) -> dict:
  import jax
  import jax.numpy as jnp

  import twinbench_jax as tb

  q, g, repeats = int(args["q"]), int(args["g"]), int(args.get("repeats", 3))
  x, y = (jnp.asarray(a) for a in _data(q, q, g))
  jax.block_until_ready((x, y))
  pipe = lambda: tb.evaluate_arrays(x, y).auc_f1
  matmul = jax.jit(lambda a, b: jnp.matmul(a, b.T, precision="highest"))  # as in the similarity
  with _common.PeakMemory() as first_mem:
    first, _ = _common.timed(pipe)
  warm = _common.median_time(pipe, repeats)
  _common.timed(lambda: matmul(x, y))
  mm = _common.median_time(lambda: matmul(x, y), repeats)
  return dict(q=q, g=g, first_s=first, seconds=warm, matmul_s=mm,
              first_extra_mib=first_mem.extra_mib, xla_temp_mib=_pipeline_temp_mib(x, y),
              device=str(jax.devices()[0].platform))


def _pipeline_temp_mib(x, y) -> float:
  """Working memory XLA assigns to the compiled pipeline kernel (its temporaries), MiB.

  RSS cannot show it on warm calls: the runtime keeps the buffers between calls.
  """
  from twinbench_jax._src.nulls import arrays as pipeline

  try:
    # The kernel `tb.evaluate_arrays(x, y)` runs (identity relevance).
    compiled = pipeline._evaluate_arrays.lower(
        x, y, None, metric="sqeuclidean", k=1, ties="average", single="identity").compile()
    return compiled.memory_analysis().temp_size_in_bytes / _common.MIB
  except Exception:  # a private kernel whose signature changed: no number, no failure
    return float("nan")


def _linear_null(q, g, b, candidate_level, randomize="permute_rows", chunk_size=None):
  """A per-gene linear model `inputs * a + c` and its model null (cheap model: the null shows).

  ``"permute_rows"`` by default: a replicate then costs the null engine's
  own work (predict, similarities, exceedance counts); the default
  ``"shuffle_features"`` adds a sort of every input row per replicate.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  import twinbench_jax as tb

  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(1.0, 0.3, size=g).astype(np.float32))
  c = jnp.asarray(rng.normal(size=g).astype(np.float32))
  inputs = jnp.asarray(rng.normal(size=(q, g)).astype(np.float32))
  refs = inputs * a + c + jnp.asarray(0.5 * rng.normal(size=(q, g)).astype(np.float32))
  predict = lambda v: v * a + c
  return lambda: tb.model_null(predict, inputs, refs, key=jax.random.key(0), n_null=b,
                               randomize=randomize, candidate_level=candidate_level,
                               chunk_size=chunk_size, progress=False)


def null_point(args: dict) -> dict:
  """Time and peak memory (RSS above the inputs) of a first call, time of a second call."""
  import jax
  import numpy as np

  q, g, b = int(args["q"]), int(args["g"]), int(args["b"])
  run = _linear_null(q, g, b, bool(args.get("candidate_level", True)),
                     args.get("randomize", "permute_rows"), args.get("chunk_size"))
  with _common.PeakMemory() as first_mem:
    first, res = _common.timed(run)
  seconds, res = _common.timed(run)
  return dict(q=q, g=g, b=b, first_s=first, seconds=seconds, first_extra_mib=first_mem.extra_mib,
              mean_p=float(np.mean(np.asarray(res.pvalues))),
              device=str(jax.devices()[0].platform))


def devices_point(args: dict) -> dict:
  import hashlib

  import jax
  import numpy as np

  q, g, b = int(args["q"]), int(args["g"]), int(args["b"])
  run = _linear_null(q, g, b, bool(args.get("candidate_level", True)),
                     args.get("randomize", "permute_rows"))
  first, res = _common.timed(run)
  warm, res = _common.timed(run)
  p = np.asarray(res.pvalues)
  cp = None if res.candidate_pvalues is None else np.asarray(res.candidate_pvalues)
  digest = hashlib.sha256(p.tobytes() + (b"" if cp is None else cp.tobytes())).hexdigest()[:16]
  return dict(n_devices=len(jax.devices()), q=q, g=g, b=b, first_s=first, seconds=warm,
              pvalues_sha256=digest)


def batch(args: dict) -> dict:
  """Several points of one task in this one process (`{"task": ..., "items": [...]}`).

  Cheaper (one start-up) but less isolated: memory freed by an earlier point
  may be reused by a later one. Used by the smallest preset only.
  """
  return dict(points=[TASKS[args["task"]](item) for item in args["items"]])


TASKS = dict(cell_eval_scores=cell_eval_scores, ours_scores=ours_scores,
             pipeline_point=pipeline_point, null_point=null_point, devices_point=devices_point,
             batch=batch)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  task, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
  _common.emit(TASKS[task](args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
