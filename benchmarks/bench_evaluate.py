"""Benchmark of `tb.evaluate` on AnnData: speed on real data, memory on a large backed file.

1. Real data (`../shared/data/papalexi2021`, 16,192 cells x 299 genes, sparse
   raw counts): `tb.evaluate` with log1p counts-per-10k, the label null and the
   three baselines (mean, control, split-half), the file scored against itself
   (both files are read, 32k cells). Times the first call after import
   (includes JIT compilation) and the median of warm calls, against a plain
   numpy/scipy version of the same computation in the same process.
2. Large backed file: a synthetic sparse `.h5ad` of 1,000,000 cells x 2,000
   genes (CSR, written in row chunks with h5py so it is never in memory) is
   evaluated from its path (streamed from disk) in a fresh subprocess, which
   reports its wall time and peak resident memory (`ru_maxrss`).

Run: `python benchmarks/bench_evaluate.py` (`--quick`: a 20,000 x 500 file).
Timings on a shared CPU are noisy; run twice before trusting a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PAPALEXI = Path(os.environ.get("TWINBENCH_DATA", REPO.parent / "shared" / "data")) / \
    "papalexi2021" / "papalexi2021_lowmoi.h5ad"


# ----------------------------------------------------------------------------- numpy version


def _numpy_auc(p, correct):
  order = np.argsort(p, kind="stable")
  a = p[order]
  tp = np.cumsum(correct[order])
  called = np.arange(1, len(p) + 1)
  f1 = 2.0 * tp / (called + len(p))
  widths = np.diff(np.r_[a, 1.0])
  return float(np.sum(f1 * widths))


def _numpy_score(pred, ref, truth):
  """sqeuclidean similarity, average ranks, label-permutation p-values, AUC-F1."""
  d = ((pred[:, None, :] - ref[None, :, :]) ** 2).sum(-1)
  s = -d
  rows = np.arange(len(truth))
  own = s[rows, truth]
  other = np.ones_like(s, bool)
  other[rows, truth] = False
  ranks = 1.0 + ((s > own[:, None]) & other).sum(1) + 0.5 * ((s == own[:, None]) & other).sum(1)
  cross = s[:, truth]
  p = (cross >= own[None, :]).sum(0) / len(truth)
  return ranks, p, _numpy_auc(p, ranks <= 1)


def numpy_evaluate(x_pred, labels_pred, x_real, labels_real, control, seed=0):
  """The computation of `tb.evaluate(..., normalize="log1p_cp10k")`, in numpy/scipy."""
  import scipy.sparse as sp

  def normalise(x):
    x = sp.csr_matrix(x, dtype=np.float64, copy=True)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    x.data *= np.repeat(scale, np.diff(x.indptr))
    np.log1p(x.data, out=x.data)
    return x

  def group_means(x, codes, n):
    keep = codes >= 0
    ind = sp.csr_matrix((np.ones(keep.sum()), (codes[keep], np.flatnonzero(keep))),
                        shape=(n, x.shape[0]))
    counts = np.bincount(codes[keep], minlength=n)
    return (ind @ x).toarray(), counts

  groups = sorted(set(labels_real))
  cands = [g for g in groups if g != control]
  index = {g: i for i, g in enumerate(cands + [control])}
  codes = np.array([index[g] for g in labels_real])
  rng = np.random.default_rng(seed)
  half = np.zeros(len(codes), int)
  for g in range(len(index)):
    members = np.flatnonzero(codes == g)
    members = members[rng.permutation(len(members))]
    half[members[len(members) // 2:]] = 1
  xr = normalise(x_real)
  sums, counts = group_means(xr, 2 * codes + half, 2 * len(index))
  real = (sums[0::2] + sums[1::2]) / (counts[0::2] + counts[1::2])[:, None]
  pcodes = np.array([cands.index(g) if g in cands else -1 for g in labels_pred])
  psums, pcounts = group_means(normalise(x_pred), pcodes, len(cands))
  pred = psums / pcounts[:, None]
  c = len(cands)
  truth = np.arange(c)
  out = {"model": _numpy_score(pred, real[:c], truth)[2]}
  for name, prof in (("mean", real[:c].mean(0)), ("control", real[c])):
    out[name] = _numpy_score(np.broadcast_to(prof, (c, prof.size)), real[:c], truth)[2]
  a = sums[0::2][:c] / counts[0::2][:c, None]
  b = sums[1::2][:c] / counts[1::2][:c, None]
  out["split_half"] = _numpy_score(a, b, truth)[2]
  return out


def bench_papalexi(repeats: int) -> dict:
  import anndata

  import twinbench_jax as tb

  real = anndata.read_h5ad(PAPALEXI)
  labels = real.obs["perturbation"].astype(str).to_numpy()

  def run_tb():
    return tb.evaluate(real, real, normalize="log1p_cp10k")

  t0 = time.perf_counter()
  report = run_tb()
  first = time.perf_counter() - t0
  warm = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run_tb()
    warm.append(time.perf_counter() - t0)
  np_times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    ref = numpy_evaluate(real.X, labels, real.X, labels, "non-targeting")
    np_times.append(time.perf_counter() - t0)
  # Same numbers (split halves differ: numpy draws its own).
  assert abs(ref["model"] - report.auc_f1) < 1e-6, (ref["model"], report.auc_f1)
  assert ref["mean"] == report.baselines["mean"] == 0.0
  t0 = time.perf_counter()
  tb.evaluate(PAPALEXI, PAPALEXI, normalize="log1p_cp10k")
  from_path = time.perf_counter() - t0
  return {"first_call_s": first, "warm_s": float(np.median(warm)),
          "numpy_s": float(np.median(np_times)), "from_path_warm_s": from_path,
          "auc_f1": report.auc_f1, "baselines": dict(report.baselines)}


# ----------------------------------------------------------------------------- big backed file


def write_sparse_h5ad(path: str, n_cells: int, n_genes: int, *, n_perturbations: int = 100,
                      density: float = 0.05, chunk: int = 5_000, seed: int = 0) -> None:
  """Streams a CSR `.h5ad` of Poisson counts to `path`, `chunk` cells at a time."""
  import anndata
  import h5py
  import pandas as pd

  write_elem = getattr(anndata.io, "write_elem", None) or anndata.experimental.write_elem
  rng = np.random.default_rng(seed)
  names = [f"KO{i:03d}" for i in range(n_perturbations)] + ["control"]
  cell_label = rng.integers(0, len(names), n_cells)
  base = rng.gamma(2.0, 1.5, n_genes).astype(np.float32)
  effect = np.ones((len(names), n_genes), np.float32)
  for p in range(n_perturbations):  # each knockout moves 20 genes
    genes = rng.choice(n_genes, 20, replace=False)
    effect[p, genes] = rng.choice([0.2, 3.0], 20)
  with h5py.File(path, "w") as f:
    f.attrs["encoding-type"] = "anndata"
    f.attrs["encoding-version"] = "0.1.0"
    obs = pd.DataFrame({"perturbation": pd.Categorical.from_codes(cell_label, names)},
                       index=pd.RangeIndex(n_cells).astype(str))
    write_elem(f, "obs", obs)
    write_elem(f, "var", pd.DataFrame(index=[f"gene{j:05d}" for j in range(n_genes)]))
    write_elem(f, "uns", {"perturbation_key": "perturbation", "control_label": "control"})
    g = f.create_group("X")
    g.attrs["encoding-type"] = "csr_matrix"
    g.attrs["encoding-version"] = "0.1.0"
    g.attrs["shape"] = (n_cells, n_genes)
    data = g.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(1 << 18,))
    indices = g.create_dataset("indices", (0,), np.int32, maxshape=(None,), chunks=(1 << 18,))
    indptr = np.zeros(n_cells + 1, np.int64)
    nnz = 0
    for start in range(0, n_cells, chunk):
      stop = min(start + chunk, n_cells)
      mask = rng.random((stop - start, n_genes), dtype=np.float32) < density
      rows, cols = np.nonzero(mask)
      lam = base[cols] * effect[cell_label[start + rows], cols]
      vals = (1 + rng.poisson(lam)).astype(np.float32)
      indptr[start + 1:stop + 1] = nnz + np.cumsum(np.bincount(rows, minlength=stop - start))
      data.resize((nnz + vals.size,))
      indices.resize((nnz + vals.size,))
      data[nnz:] = vals
      indices[nnz:] = cols.astype(np.int32)
      nnz += vals.size
    g.create_dataset("indptr", data=indptr)


def write_prediction(path: str, real_path: str) -> None:
  """One row per knockout: the real pseudobulk's profile with noise (a decent model)."""
  import anndata
  import pandas as pd

  import twinbench_jax as tb

  pb = tb.pseudobulk(real_path, normalize="log1p_cp10k")
  keep = pb.labels != "control"
  rng = np.random.default_rng(1)
  x = pb.means[keep] + 0.05 * rng.normal(size=pb.means[keep].shape)
  anndata.AnnData(x.astype(np.float32),
                  obs=pd.DataFrame({"perturbation": pb.labels[keep]},
                                   index=[f"p{i}" for i in range(keep.sum())]),
                  var=pd.DataFrame(index=pb.genes)).write_h5ad(path)


def child_backed(pred_path: str, real_path: str) -> None:
  """Runs in a fresh process: evaluate from paths, print time and peak memory as JSON."""
  t_import = time.perf_counter()
  import twinbench_jax as tb

  t0 = time.perf_counter()
  report = tb.evaluate(pred_path, real_path, pred_normalize="none", normalize="log1p_cp10k")
  wall = time.perf_counter() - t0
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
  print(json.dumps({"evaluate_s": wall, "import_s": t0 - t_import, "peak_rss_mb": peak_mb,
                    "auc_f1": report.auc_f1, "baselines": dict(report.baselines),
                    "n_queries": report.n_queries}))


def bench_backed(n_cells: int, n_genes: int, keep: bool) -> dict:
  tmp = tempfile.mkdtemp(prefix="twinbench-bench-")
  real_path = os.path.join(tmp, "real.h5ad")
  pred_path = os.path.join(tmp, "pred.h5ad")
  t0 = time.perf_counter()
  write_sparse_h5ad(real_path, n_cells, n_genes)
  gen = time.perf_counter() - t0
  write_prediction(pred_path, real_path)
  size_mb = os.path.getsize(real_path) / 2**20
  proc = subprocess.run([sys.executable, __file__, "--child-backed", pred_path, real_path],
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(proc.stderr[-3000:])
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out.update(n_cells=n_cells, n_genes=n_genes, file_mb=size_mb, generate_s=gen)
  if keep:
    out["files"] = tmp
  else:
    for p in (real_path, pred_path):
      os.remove(p)
    os.rmdir(tmp)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="a 20,000 x 500 backed file")
  parser.add_argument("--repeats", type=int, default=5, help="warm repeats (default 5)")
  parser.add_argument("--skip-backed", action="store_true", help="only the papalexi part")
  parser.add_argument("--keep", action="store_true", help="keep the generated files")
  parser.add_argument("--child-backed", nargs=2, metavar=("PRED", "REAL"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child_backed:
    child_backed(*args.child_backed)
    return
  import jax

  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPU cores")
  if PAPALEXI.is_file():
    r = bench_papalexi(args.repeats)
    print("\npapalexi2021 (16,192 cells x 299 genes, sparse), scored against itself: "
          "log1p_cp10k, label null, 3 baselines")
    print(f"  tb.evaluate first call after import (incl. JIT compile): {r['first_call_s']:6.2f} s")
    print(f"  tb.evaluate warm (median of {args.repeats}):                  {r['warm_s']:6.3f} s")
    print(f"  plain numpy/scipy, same computation (median):          {r['numpy_s']:6.3f} s"
          f"   ratio tb/numpy warm {r['warm_s'] / r['numpy_s']:.2f}, first call "
          f"{r['first_call_s'] / r['numpy_s']:.2f}")
    print(f"  tb.evaluate from the .h5ad paths (streamed, warm):      "
          f"{r['from_path_warm_s']:6.3f} s")
    print(f"  AUC-F1 {r['auc_f1']:.3f}; baselines {r['baselines']}")
  else:
    print(f"papalexi2021 not found at {PAPALEXI}; skipped")
  if not args.skip_backed:
    n_cells, n_genes = (20_000, 500) if args.quick else (1_000_000, 2_000)
    r = bench_backed(n_cells, n_genes, args.keep)
    print(f"\nsynthetic sparse .h5ad, {r['n_cells']:,} cells x {r['n_genes']:,} genes "
          f"({r['file_mb']:.0f} MB on disk, written in {r['generate_s']:.0f} s), 100 knockouts, "
          "evaluated from its path in a subprocess (log1p_cp10k, label null, 3 baselines)")
    print(f"  evaluate {r['evaluate_s']:.1f} s (import {r['import_s']:.1f} s); peak RSS "
          f"{r['peak_rss_mb']:.0f} MB (limit 2048 MB: "
          f"{'ok' if r['peak_rss_mb'] < 2048 else 'EXCEEDED'})")
    print(f"  AUC-F1 {r['auc_f1']:.3f}; baselines "
          f"{ {k: round(v, 3) for k, v in r['baselines'].items()} }")
    if "files" in r:
      print(f"  files kept in {r['files']}")


if __name__ == "__main__":
  main()
