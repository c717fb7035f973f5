"""Pseudobulk profiles from AnnData: reading, normalising, aligning (SPEC §7).

The AnnData layer between `.h5ad` files and the array core. A profile is the
mean expression of the cells of one perturbation. The matrix is read in
blocks of at most `chunk_size` cells, so the whole matrix is never densified
and a backed AnnData (or a path, opened read-only with h5py) streams from
disk; a matrix in memory is read in blocks of whole perturbations. Sums are
accumulated in float64 in the same order for dense and sparse data, so the
two give bit-identical profiles.

Nothing here imports JAX: the profiles are numpy arrays handed to the core.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from twinbench_jax._src.core import native
from twinbench_jax._src.core import threads

# Entries (cells x genes) of one row block when `chunk_size=None`: 32 MB of float64 if dense.
_BLOCK_ELEMENTS = 1 << 22

# normalize= name -> target sum per cell (None: log1p only, no library-size scaling).
NORMALIZATIONS = {"log1p": None, "log1p_cp10k": 1e4, "log1p_cpm": 1e6}


# ----------------------------------------------------------------------------- sources


def _anndata_io():
  """`(read_elem, sparse_dataset)`, imported lazily: `import twinbench_jax` stays light."""
  try:  # anndata >= 0.11
    from anndata.io import read_elem, sparse_dataset
  except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem, sparse_dataset
  return read_elem, sparse_dataset


class Source:
  """Read-only view of an AnnData or an `.h5ad` file: labels, genes, `uns`, row blocks.

  Built by `open_source`. `name` is how error messages refer to the data
  (``"adata_real"`` or the file path).
  """

  def __init__(self, name: str, *, n_obs: int, var_names: pd.Index, obs_keys: Sequence[str],
               read_obs, uns: dict, matrices: dict, layer_names: Sequence[str], closer=None,
               is_file: bool = False):
    self.name = name
    self.is_file = is_file
    self.n_obs = int(n_obs)
    self.var_names = var_names
    self.obs_keys = list(obs_keys)
    self._read_obs = read_obs
    self.uns = uns
    self._matrices = matrices
    self.layer_names = list(layer_names)
    self._closer = closer

  def where(self, part: str) -> str:
    """How messages name a part: `adata_real.obs` for an object, `obs` of 'r.h5ad' for a file."""
    if self.is_file:
      return f"`{part}` of {self.name!r}"
    return f"`{self.name}.{part}`"

  def obs_labels(self, key: str) -> np.ndarray:
    """`[n_obs]` string labels of `obs[key]`; an error names the available columns."""
    return self._obs_column(key).astype(str).to_numpy()

  def obs_codes(self, key: str) -> "Labels":
    """`obs[key]` as distinct string labels and a code per cell (`obs_labels` without the strings).

    A categorical column is read through its codes, so millions of cells cost
    no string work; other columns are factorized. Same checks as `obs_labels`.
    """
    col = self._obs_column(key)
    if isinstance(col.dtype, pd.CategoricalDtype):
      names = np.asarray(col.cat.categories.astype(str), dtype=object)
      codes = col.cat.codes.to_numpy().astype(np.int64)
      if len(set(names.tolist())) < names.size:  # categories equal as strings (1 and "1")
        codes_of_names, names = pd.factorize(names)
        codes = codes_of_names.astype(np.int64)[codes]
        names = np.asarray(names, dtype=object)
      return Labels(names, codes)
    codes, names = pd.factorize(col.astype(str).to_numpy(dtype=object))
    return Labels(np.asarray(names, dtype=object), codes.astype(np.int64))

  def _obs_column(self, key: str) -> pd.Series:
    """`obs[key]` as a Series; errors name the available columns and cells without a label."""
    if key not in self.obs_keys:
      raise ValueError(
          f"Could not find key {key!r} in {self.where('obs')}; available: {self.obs_keys}. "
          "Pass the column that holds the perturbation label as `perturbation_key` "
          "(CLI: --perturbation-key).")
    raw = self._read_column(key)
    col = pd.Series(raw if isinstance(raw, pd.Categorical) else np.asarray(raw))
    missing = col.isna().to_numpy()
    if missing.any():
      first = np.flatnonzero(missing)[:5].tolist()
      raise ValueError(
          f"{self.where(f'obs[{key!r}]')} has no label for {int(missing.sum())} cell(s) (rows "
          f"{first}{' ...' if missing.sum() > 5 else ''}); label or remove them first.")
    return col

  def _read_column(self, key: str):
    """`obs[key]` as stored; a column the reader refuses is an error naming it."""
    try:
      raw = self._read_obs(key)
    except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
      raise ValueError(
          f"could not read {self.where(f'obs[{key!r}]')}: the column is corrupt ({e}); a "
          "categorical column's codes must index its categories. Rewrite the file with "
          "anndata.") from None
    if len(raw) != self.n_obs:
      raise ValueError(f"{self.where(f'obs[{key!r}]')} has {len(raw)} values for {self.n_obs} "
                       "cells; the file is corrupt")
    return raw

  def check_has_cells(self) -> None:
    """Raises when there is no cell at all (an empty file is not a missing label)."""
    if self.n_obs == 0:
      what = repr(self.name) if self.is_file else f"`{self.name}`"
      raise ValueError(f"{what} has 0 cells (its obs is empty); nothing to evaluate. Check that "
                       "the file was written completely and that no filter removed every cell.")

  def obs_strings(self, key: str, hint: str = "") -> np.ndarray:
    """`[n_obs]` object array of `obs[key]` as strings, None where a cell has no value."""
    if key not in self.obs_keys:
      raise ValueError(f"Could not find key {key!r} in {self.where('obs')}; available: "
                       f"{self.obs_keys}.{' ' + hint if hint else ''}")
    raw = self._read_column(key)
    col = pd.Series(raw if isinstance(raw, pd.Categorical) else np.asarray(raw))
    missing = col.isna().to_numpy()
    out = col.astype(str).str.strip().to_numpy(dtype=object)
    out[missing | (out == "")] = None
    return out

  def matrix(self, layer: Optional[str]):
    """The expression matrix (`X`, or `layers[layer]`), sliceable by row blocks."""
    where = "X" if layer is None else f"layers[{layer!r}]"
    if layer is None:
      mat = self._matrices.get("X")
      if mat is None:
        raise ValueError(f"{self.where('X')} is missing; pass `layer=` (available layers: "
                         f"{self.layer_names})")
    else:
      if layer not in self.layer_names:
        raise ValueError(f"Could not find layer {layer!r} in {self.where('layers')}; available: "
                         f"{self.layer_names}. Use layer=None (CLI: omit --layer) for `X`.")
      mat = self._matrices[layer]()
    if len(mat.shape) != 2 or mat.shape[0] != self.n_obs or mat.shape[1] != len(self.var_names):
      raise ValueError(f"{self.where(where)} has shape {tuple(mat.shape)}, expected "
                       f"{(self.n_obs, len(self.var_names))}")
    if isinstance(mat, _H5CSR):
      mat.where = self.where(where)
    elif sp.issparse(mat) and mat.format == "csr":
      check_indptr(mat.indptr, mat.shape[0], mat.data.shape[0], self.where(where))
    return mat

  def close(self) -> None:
    if self._closer is not None:
      self._closer()
      self._closer = None


@dataclasses.dataclass(frozen=True)
class Labels:
  """Cell labels as distinct names and a code per cell (`Source.obs_codes`).

  Attributes:
    names: `[K]` object array of distinct string labels (in no particular
      order; some may label no cell).
    codes: `[n_obs]` int64 index of each cell's label in `names`.
  """

  names: np.ndarray
  codes: np.ndarray

  def per_cell(self) -> np.ndarray:
    """`[n_obs]` string label of each cell."""
    return self.names[self.codes]

  def present(self) -> np.ndarray:
    """`[K]` bool: the names that label at least one cell."""
    return np.bincount(self.codes, minlength=self.names.size) > 0

  def sorted_unique(self) -> np.ndarray:
    """The labels of the cells, sorted (`np.unique` of `per_cell()`)."""
    return np.sort(self.names[self.present()])

  def in_order_of_appearance(self) -> np.ndarray:
    """The labels of the cells, in the order they first appear (`pd.unique` of `per_cell()`)."""
    used, first = np.unique(self.codes, return_index=True)
    return self.names[used[np.argsort(first)]]

  def index_in(self, groups: Sequence[str]) -> np.ndarray:
    """`[n_obs]` int position of each cell's label in `groups`, -1 where it is not there."""
    return pd.Index(list(groups)).get_indexer(self.names)[self.codes]


def _from_anndata(adata, name: str) -> Source:
  obs = adata.obs
  layers = {k: (lambda k=k: adata.layers[k]) for k in adata.layers.keys()}
  return Source(
      name, n_obs=adata.n_obs, var_names=pd.Index(adata.var_names), obs_keys=list(obs.columns),
      read_obs=lambda key: obs[key].array if isinstance(obs[key].dtype, pd.CategoricalDtype)
      else obs[key].to_numpy(),
      uns=dict(adata.uns) if adata.uns is not None else {},
      matrices={"X": adata.X, **layers}, layer_names=list(adata.layers.keys()))


class _H5CSR:
  """A CSR matrix in an open `.h5ad` group, read by row blocks straight from its datasets.

  Row blocks are all `group_sums` asks for; reading `data`/`indices` slices with
  h5py skips the per-call checks of anndata's general sparse dataset.
  """

  def __init__(self, group):
    self._group = group
    self.shape = tuple(int(n) for n in group.attrs["shape"])
    self._indptr = None
    self.where = "the matrix"  # how errors name it (set by `Source.matrix`)

  def rows(self, start: int, stop: int) -> sp.csr_matrix:
    if self._indptr is None:  # read once: (n_obs + 1) integers
      indptr = np.asarray(self._group["indptr"][...], np.int64)
      check_indptr(indptr, self.shape[0], self._group["data"].shape[0], self.where)
      self._indptr = indptr
    lo, hi = int(self._indptr[start]), int(self._indptr[stop])
    return sp.csr_matrix((self._group["data"][lo:hi], self._group["indices"][lo:hi],
                          self._indptr[start:stop + 1] - lo), shape=(stop - start, self.shape[1]))


def check_indptr(indptr: np.ndarray, n_rows: int, nnz: int, where: str) -> None:
  """Raises, naming `where` and the first bad row, when CSR row pointers are corrupt.

  Cheap (`n_rows + 1` integers) and needed: a decreasing pointer makes a row
  block silently empty or shifted in scipy's and numpy's code paths.
  """
  indptr = np.asarray(indptr)
  if indptr.shape != (n_rows + 1,):
    raise ValueError(f"{where}: the sparse row pointers (indptr) have shape {indptr.shape}, "
                     f"expected ({n_rows + 1},); the sparse matrix is corrupt.")
  if n_rows == 0:
    return
  step = np.diff(indptr)
  if indptr[0] != 0 or indptr[-1] != nnz or (step < 0).any():
    if indptr[0] != 0:
      what = f"start at {int(indptr[0])}, not 0"
    elif (step < 0).any():
      row = int(np.flatnonzero(step < 0)[0])
      what = (f"decrease at cell (row) {row} ({int(indptr[row])} -> {int(indptr[row + 1])}); "
              "they must be non-decreasing")
    else:
      what = f"end at {int(indptr[-1])}, but the matrix stores {nnz} values"
    raise ValueError(f"{where}: the sparse row pointers (indptr) {what}; the sparse matrix is "
                     "corrupt. Rewrite it with anndata / scipy.")


def _h5_matrix(node):
  import h5py  # a dependency of anndata

  if isinstance(node, h5py.Dataset):
    return node
  if (node.attrs.get("encoding-type") == "csr_matrix" and "shape" in node.attrs
      and all(k in node for k in ("data", "indices", "indptr"))):
    return _H5CSR(node)
  return _anndata_io()[1](node)


# Encodings `_read_elem` reads with h5py alone; any other goes to anndata's reader.
_H5_SIMPLE = ("string-array", "array", "categorical", "string")


def _read_elem(node):
  """An `.h5ad` element as anndata's `read_elem` returns it, without importing anndata for
  the plain encodings (a string or numeric array, a categorical of them, a string).

  Importing `anndata.io` takes about 0.5 s, as long as the command line's
  whole computation on a small screen.
  """
  import h5py

  kind = node.attrs.get("encoding-type")
  if kind not in _H5_SIMPLE or (kind == "categorical") != isinstance(node, h5py.Group):
    return _anndata_io()[0](node)
  if kind == "categorical":
    cats = node["categories"]
    if cats.attrs.get("encoding-type") not in ("string-array", "array"):
      return _anndata_io()[0](node)
    return pd.Categorical.from_codes(np.asarray(node["codes"][...]),
                                     categories=pd.Index(_read_elem(cats)),
                                     ordered=bool(node.attrs.get("ordered", False)))
  if kind == "string-array":
    return node.asstr()[...]
  if kind == "string":
    return node.asstr()[()]
  return node[...]


def _from_h5ad(path: str) -> Source:
  import h5py

  if os.path.isdir(path):
    raise ValueError(f"{path!r} is a folder; only `.h5ad` files are read (zarr is not supported)")
  if not os.path.exists(path):
    raise FileNotFoundError(f"file not found: {path!r}")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"could not open {path!r} as an .h5ad (HDF5) file, is it empty or "
                     f"truncated? ({e})") from None
  try:
    for part in ("obs", "var"):
      if part not in f:
        raise ValueError(f"{path!r} is not a complete .h5ad file: it has no `{part}`")
    obs_g, var_g = f["obs"], f["var"]
    var_names = pd.Index(np.asarray(_read_elem(var_g[var_g.attrs["_index"]])).astype(str))
    obs_index = obs_g[obs_g.attrs["_index"]]
    obs_keys = [str(c) for c in np.atleast_1d(obs_g.attrs.get("column-order", []))]
    uns = {}
    if "uns" in f:
      for k in ("perturbation_key", "control_label"):
        if k in f["uns"]:
          uns[k] = _read_elem(f["uns"][k])
    layer_names = list(f["layers"].keys()) if "layers" in f else []
    matrices = {"X": _h5_matrix(f["X"]) if "X" in f else None}
    matrices.update({k: (lambda k=k: _h5_matrix(f["layers"][k])) for k in layer_names})
    return Source(path, n_obs=obs_index.shape[0], var_names=var_names, obs_keys=obs_keys,
                  read_obs=lambda key: _read_elem(obs_g[key]), uns=uns, matrices=matrices,
                  layer_names=layer_names, closer=f.close, is_file=True)
  except ValueError:
    f.close()
    raise
  except (OSError, KeyError, RuntimeError, TypeError) as e:
    f.close()
    raise ValueError(f"could not read {path!r} as .h5ad, is it truncated or not written by "
                     f"anndata? ({type(e).__name__}: {e})") from None


def open_source(data: Any, name: str) -> Source:
  """An AnnData (in memory or backed) or a path to an `.h5ad` file, as a `Source`.

  A path is opened read-only with h5py: only the label column, the gene names
  and the matrix blocks are read, never the whole file.
  """
  if isinstance(data, Source):
    return data
  if isinstance(data, (str, os.PathLike)):
    return _from_h5ad(os.fspath(data))
  if hasattr(data, "obs") and hasattr(data, "var_names") and hasattr(data, "X"):
    return _from_anndata(data, name)
  raise TypeError(f"`{name}` must be an AnnData or a path to an .h5ad file, got "
                  f"{type(data).__name__}")


def check_unique_genes(source: Source) -> None:
  """Raises when gene names repeat: a profile needs one column per gene."""
  names = source.var_names
  if not names.is_unique:
    dup = names[names.duplicated()].unique().tolist()
    raise ValueError(
        f"{source.where('var_names')} has {len(dup)} duplicated gene name(s): "
        f"{dup[:10]}{' ...' if len(dup) > 10 else ''}; make them unique first "
        "(`adata.var_names_make_unique()`).")


# ----------------------------------------------------------------------------- streaming sums


def check_normalize(normalize: Optional[str], name: str = "normalize") -> Optional[str]:
  """Validates a `normalize=` value; ``None``/``"none"`` mean no normalisation."""
  if normalize is None or normalize == "none":
    return None
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"unknown `{name}` {normalize!r}; choose one of "
                     f"{['none', *NORMALIZATIONS]}")
  return normalize


def _rows(mat, start: int, stop: int):
  """Rows `start:stop` of a matrix; an in-memory CSR block is a view (no copy of the data)."""
  if isinstance(mat, _H5CSR):
    return mat.rows(start, stop)
  if sp.issparse(mat) and mat.format == "csr":
    lo, hi = mat.indptr[start], mat.indptr[stop]
    return sp.csr_matrix((mat.data[lo:hi], mat.indices[lo:hi], mat.indptr[start:stop + 1] - lo),
                         shape=(stop - start, mat.shape[1]))
  return mat[start:stop]


def _block_as_csr(block) -> sp.csr_matrix:
  """One row block as float64 CSR with its own values (normalisation works in place on them)."""
  if sp.issparse(block):
    block = block.tocsr()
    # Only the values are copied; the (read-only here) index arrays are shared.
    return sp.csr_matrix((block.data.astype(np.float64), block.indices, block.indptr),
                         shape=block.shape)
  return sp.csr_matrix(np.asarray(block, np.float64))


def _check_finite_block(block, source: Source, where: str, start: int, used: np.ndarray) -> None:
  """Raises, naming the first cell, when a used row of a block holds NaN or inf.

  `used`: local indices of the rows that belong to a group.
  """
  if sp.issparse(block):
    blk = sp.csr_matrix(block)
    bad = ~np.isfinite(blk.data)
    rows = np.repeat(np.arange(blk.shape[0]), np.diff(blk.indptr))[bad]
  else:
    bad = ~np.isfinite(np.asarray(block))
    rows = np.nonzero(bad)[0]
  rows = rows[np.isin(rows, used)]
  if rows.size:
    raise ValueError(
        f"{source.where(where)} holds {rows.size} non-finite value(s) (NaN or inf) in cells "
        f"{start}..{start + block.shape[0] - 1}, first in cell (row) {start + int(rows.min())}; "
        "clean or impute them before scoring.")


def _normalize_block(blk: sp.csr_matrix, normalize: str, source: Source, where: str,
                     cells: Optional[np.ndarray] = None) -> sp.csr_matrix:
  """Per-cell normalisation of a CSR block in place. `cells`: the block's row numbers."""
  finite = np.isfinite(blk.data)
  if not finite.all():  # NaN/inf first: -inf is not a "negative count"
    local = np.repeat(np.arange(blk.shape[0]), np.diff(blk.indptr))[~finite]
    rows = local if cells is None else np.asarray(cells)[local]
    raise ValueError(
        f"{source.where(where)} holds {local.size} non-finite value(s) (NaN or inf), first in "
        f"cell (row) {int(rows.min())}; normalize={normalize!r} needs finite counts. Clean or "
        "impute them before scoring.")
  if blk.data.size and blk.data.min() < 0:
    raise ValueError(
        f"normalize={normalize!r} expects non-negative counts, but {source.where(where)} has "
        "negative values (already log-normalised or scaled?); use normalize=None "
        "(CLI: --normalize none) for data that is already normalised.")
  target = NORMALIZATIONS[normalize]
  if target is not None:
    totals = np.asarray(blk.sum(axis=1)).ravel()
    scale = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
    blk.data *= np.repeat(scale, np.diff(blk.indptr))
  np.log1p(blk.data, out=blk.data)
  return blk


# Cells sampled by `count_like` (from the start of the matrix).
_COUNT_SAMPLE_CELLS = 1000
# log1p of a count per million: log-normalised values never exceed it.
_LOG_MAX = float(np.log1p(1e6))


def count_like(source: Source, layer: Optional[str]) -> Optional[tuple[float, int]]:
  """None when the first cells hold whole numbers (counts); else `(largest value, cells read)`.

  A cheap look at up to `_COUNT_SAMPLE_CELLS` cells, for the note that
  `normalize=` is applied to data that is not raw counts (e.g. already
  log-normalised): non-integer values are never counts.
  """
  mat = source.matrix(layer)
  n = min(mat.shape[0], _COUNT_SAMPLE_CELLS)
  if n == 0:
    return None
  block = _rows(mat, 0, n)
  values = np.asarray(block.data if sp.issparse(block) else block)
  values = values[np.isfinite(values)]
  if values.size == 0 or values.dtype.kind in "iub" or np.all(values == np.round(values)):
    return None
  return float(values.max()), n


def _loop_dtype(values) -> bool:
  """Values the compiled loops add as they are (other dtypes go through a float64 copy)."""
  return values.dtype.kind in "fiu" and values.dtype.itemsize >= 4


def _in_memory(mat) -> bool:
  """A numpy array or an in-memory scipy CSR matrix: rows can be gathered in any order."""
  return isinstance(mat, np.ndarray) or (sp.issparse(mat) and mat.format == "csr")


def _grouped_blocks(codes: np.ndarray, chunk_size: int) -> list[np.ndarray]:
  """The used cells, ordered by group (stably), cut into blocks of whole groups.

  A block holds at most `chunk_size` cells unless one group alone is larger, in
  which case that group is cut into `chunk_size` pieces. Whole groups per block
  make each group's sum one left-to-right float64 sum over its cells, and the
  plan depends only on `codes` and `chunk_size`, so dense and sparse copies of
  the same data are added in exactly the same order.
  """
  used = np.flatnonzero(codes >= 0)
  order = used[np.argsort(codes[used], kind="stable")]
  cuts = np.flatnonzero(np.diff(codes[order])) + 1
  bounds = np.concatenate([[0], cuts, [order.size]]) if order.size else np.zeros(1, np.int64)
  blocks, lo = [], 0
  for start, stop in zip(bounds[:-1], bounds[1:]):
    if stop - start > chunk_size:  # a group larger than a block: its own pieces
      if start > lo:
        blocks.append(order[lo:start])
      blocks.extend(order[i:min(i + chunk_size, stop)] for i in range(start, stop, chunk_size))
      lo = stop
    elif stop - lo > chunk_size:
      blocks.append(order[lo:start])
      lo = start
  if order.size > lo:
    blocks.append(order[lo:])
  return blocks


def _add_rows(block, rows: np.ndarray, groups: np.ndarray, out: np.ndarray, name_row) -> None:
  """`out[groups[i]] += block[rows[i]]` with the compiled loops (-1 skips a row).

  `name_row(i)` names row `i` in the error raised for a corrupt sparse matrix.
  """
  rows = np.asarray(rows, np.int64)
  groups = np.asarray(groups, np.int64)
  if sp.issparse(block):
    blk = block if block.format == "csr" else block.tocsr()
    data = blk.data if _loop_dtype(blk.data) else blk.data.astype(np.float64)
    bad = native.csr_group_sums(data, blk.indices, blk.indptr, rows, groups, out)
    if bad is not None:
      raise ValueError(f"{name_row(bad)} has column indices or row pointers out of range; the "
                       "sparse matrix is corrupt.")
  else:
    arr = np.asarray(block)
    native.dense_group_sums(arr if _loop_dtype(arr) else arr.astype(np.float64), rows, groups,
                            out)


def _sums_in_place(mat, codes: np.ndarray, blocks: list[np.ndarray], sums: np.ndarray,
                   where: str) -> None:
  """Adds the blocks of an in-memory matrix into `sums` with the compiled loops.

  A block of whole groups owns its rows of `sums`, so its loop adds into them
  directly, reading the rows where they are (no gather, no partial sums). The
  pieces of a group larger than a block (`_grouped_blocks`) are summed apart
  and added in block order afterwards, as `group_sums`'s partial sums are: the
  result is bit-identical to it, on any number of threads. Runs of blocks with
  about the same number of cells go to the threads.
  """
  sizes = np.bincount(codes[codes >= 0], minlength=sums.shape[0])
  cells = np.cumsum([b.size for b in blocks])
  n = min(threads.n_threads(), len(blocks))
  cuts = np.searchsorted(cells, cells[-1] * np.arange(1, n) / n) if blocks else []
  runs = [r for r in np.split(np.arange(len(blocks)), cuts) if r.size]

  def run(block_ids):
    pieces = []
    for i in block_ids:
      rows = blocks[i]
      groups = codes[rows]
      name = lambda j, rows=rows: f"{where}: cell (row) {int(rows[j])}"  # noqa: E731
      if groups[0] == groups[-1] and sizes[groups[0]] > rows.size:  # a piece of a large group
        part = np.zeros((1, sums.shape[1]), np.float64)
        _add_rows(mat, rows, np.zeros_like(groups), part, name)
        pieces.append((int(groups[0]), part[0]))
      else:
        _add_rows(mat, rows, groups, sums, name)
    return pieces

  for pieces in threads.run_all(run, runs, n):
    for group, part in pieces:
      sums[group] += part


def group_sums(
    source: Source,
    codes: np.ndarray,
    n_groups: int,
    *,
    layer: Optional[str] = None,
    normalize: Optional[str] = None,
    chunk_size: Optional[int] = None,
    progress: bool = False,
    desc: str = "",
) -> tuple[np.ndarray, np.ndarray]:
  """Per-group sums of (normalised) expression, over blocks of cells.

  A matrix held in memory (numpy or CSR) is read group by group (`_grouped_blocks`):
  each block touches few groups, so its partial sums are small, and blocks are
  summed on several threads (added in block order: the same sums on any
  number of threads). A backed or on-disk matrix streams in row order,
  `chunk_size` cells at a time, read on this thread while the threads sum the
  blocks read before.

  Args:
    source: from `open_source`.
    codes: `[n_obs]` int group of each cell in `[0, n_groups)`; `-1` skips a cell.
    n_groups: number of groups.
    layer: `None` for `X`, else a layer name.
    normalize: `None` or a key of `NORMALIZATIONS` (per cell, before summing).
    chunk_size: cells per block; `None` picks about 4 million entries
      (cells x genes) per block.
    progress: show a tqdm bar.

  Returns:
    `([n_groups, G] float64 sums, [n_groups] int cell counts)`.
  """
  mat = source.matrix(layer)
  where = "X" if layer is None else f"layers[{layer!r}]"
  n, g = mat.shape
  if chunk_size is None:
    chunk_size = int(np.clip(_BLOCK_ELEMENTS // max(g, 1), 1_000, 200_000))
  if chunk_size < 1:
    raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}")
  codes = np.asarray(codes)
  sums = np.zeros((n_groups, g), np.float64)
  counts = np.bincount(codes[codes >= 0], minlength=n_groups)[:n_groups]

  compiled = native.pays_for_group_sums(n * g)

  def block_sums(cells, block):
    """`(first group, [groups, G] partial sums)` of one block, or None when it has no used cell."""
    c = codes[cells]
    keep = np.flatnonzero(c >= 0)
    if keep.size == 0:
      return None
    lo, hi = int(c[keep].min()), int(c[keep].max()) + 1
    if compiled:
      # The compiled loop adds each value straight into its group's float64 row in the
      # order of the indicator product below (cells in block order): the same sums, bit
      # for bit, without the indicator matrix (nor, unnormalised, a float64 copy).
      part = np.zeros((hi - lo, g), np.float64)
      if normalize is not None:
        block = _normalize_block(_block_as_csr(block), normalize, source, where, cells)
      _add_rows(block, np.arange(cells.size), np.where(c >= 0, c - lo, -1), part,
                lambda i: f"{source.where(where)}: cell (row) {int(cells[i])}")
      return lo, part
    indicator = sp.csr_matrix((np.ones(keep.size), (c[keep] - lo, keep)),
                              shape=(hi - lo, cells.size))
    if normalize is None and not sp.issparse(block):
      # Dense without normalisation: a sparse-times-dense product adds the same terms in the
      # same order as the sparse path below (zeros aside), so profiles stay bit-identical.
      return lo, indicator @ np.asarray(block, np.float64)
    blk = _block_as_csr(block)
    if normalize is not None:
      blk = _normalize_block(blk, normalize, source, where, cells)
    return lo, (indicator @ blk).toarray()

  # Blocks are summed on several threads (the compiled loops and scipy's sparse products
  # release the GIL); the partial sums are still added in block order, so the result is
  # the same on any number of threads.
  results = None  # partial sums of the blocks, in block order
  if _in_memory(mat):
    blocks = _grouped_blocks(codes, chunk_size)
    if compiled and normalize is None and _loop_dtype(mat.data if sp.issparse(mat) else mat):
      _sums_in_place(mat, codes, blocks, sums, source.where(where))  # no partial sums
    else:
      results = threads.map_in_order(lambda cells: block_sums(cells, mat[cells]), blocks,
                                     threads.n_threads())
  else:
    blocks = [np.arange(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]

    def read(cells):
      # On the calling thread (file reads are not thread-safe), while the threads sum the
      # blocks read before; a block without a used cell is not read at all.
      used = np.any(codes[cells] >= 0)
      return cells, _rows(mat, int(cells[0]), int(cells[-1]) + 1) if used else None

    results = threads.map_in_order(lambda item: block_sums(*item), blocks, threads.n_threads(),
                                   prepare=read)
  if progress and len(blocks) > 1 and results is not None:
    from tqdm import tqdm

    # disable=None: a bar on a terminal, silent when stderr is not one.
    results = tqdm(results, total=len(blocks), desc=desc or f"reading {source.name}",
                   unit="block", leave=False, disable=None)
  for res in results or ():
    if res is not None:
      lo, part = res
      sums[lo:lo + part.shape[0]] += part
  # NaN and inf propagate into the float64 sums (finite float32 input cannot overflow
  # them), so one check of the result replaces a pass over every value; a second pass
  # names the first bad cell.
  if not np.isfinite(sums).all():
    for start in range(0, n, chunk_size):
      stop = min(start + chunk_size, n)
      used = np.flatnonzero(codes[start:stop] >= 0)
      _check_finite_block(_rows(mat, start, stop), source, where, start, used)
    raise ValueError(f"{source.where(where)}: the per-perturbation sums overflow float64; "
                     "the values are too large to average, rescale them first.")
  return sums, counts


# ----------------------------------------------------------------------------- pseudobulk


def factorize(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(sorted unique labels, [n] int code of each label)`.

  The result of `np.unique(labels, return_inverse=True)`, by hashing instead
  of sorting: fast on millions of string labels.
  """
  codes, uniq = pd.factorize(np.asarray(labels, dtype=object), sort=True)
  return np.asarray(uniq, dtype=object), codes.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Pseudobulk:
  """Mean expression per perturbation.

  Attributes:
    labels: `[P]` perturbation labels (sorted).
    means: `[P, G]` float64 mean (normalised) expression of each perturbation's cells.
    n_cells: `[P]` number of cells behind each profile.
    genes: `[G]` gene names (the columns of `means`).
  """

  labels: np.ndarray
  means: np.ndarray
  n_cells: np.ndarray
  genes: np.ndarray

  def to_frame(self) -> pd.DataFrame:
    """Perturbations x genes `DataFrame` of the means."""
    return pd.DataFrame(self.means, index=pd.Index(self.labels, name="perturbation"),
                        columns=pd.Index(self.genes, name="gene"))


def resolve_keys(source: Source, perturbation_key: Optional[str], control: Any
                 ) -> tuple[str, Optional[str]]:
  """Defaults from `uns['perturbation_key']` / `uns['control_label']`, else the SPEC §7 names.

  ``control=False`` means the data has no control.
  """
  if perturbation_key is None:
    perturbation_key = str(source.uns.get("perturbation_key", "perturbation"))
  if control is None:
    control = str(source.uns.get("control_label", "control"))
  elif control is False:
    control = None
  return perturbation_key, control


def pseudobulk(
    adata: Any,
    *,
    perturbation_key: Optional[str] = None,
    layer: Optional[str] = None,
    normalize: Optional[str] = None,
    chunk_size: Optional[int] = None,
    progress: bool = True,
) -> Pseudobulk:
  """Pseudobulk profile (mean expression) of every perturbation (SPEC §7).

  Streams `X` (or `layer`) in blocks of `chunk_size` cells: dense or sparse,
  in memory or backed, never densifying the whole matrix.

  Args:
    adata: an AnnData (in memory or backed) or a path to an `.h5ad` file.
    perturbation_key: `obs` column with the perturbation label; default
      `adata.uns['perturbation_key']`, else ``"perturbation"``.
    layer: a layer name; `None` reads `X`.
    normalize: `None` (the values as stored), ``"log1p"``, ``"log1p_cp10k"``
      (log1p of counts per 10,000 per cell) or ``"log1p_cpm"`` (per million).
      Normalisation is per cell, before averaging.
    chunk_size: cells read at a time (`None`: about 4 million entries per block).
    progress: show a progress bar (default True: on a terminal only).

  Returns:
    A `Pseudobulk`, perturbations sorted by label.

  Example:
    >>> pb = tb.pseudobulk("papalexi2021_lowmoi.h5ad", normalize="log1p_cp10k")
    >>> pb.to_frame().loc["STAT1", "STAT1"]
  """
  owned = isinstance(adata, (str, os.PathLike))
  src = open_source(adata, "adata")
  try:
    key, _ = resolve_keys(src, perturbation_key, False)
    norm = check_normalize(normalize)
    labels = src.obs_labels(key)
    uniq, codes = factorize(labels)
    sums, counts = group_sums(src, codes, len(uniq), layer=layer, normalize=norm,
                              chunk_size=chunk_size, progress=progress)
    return Pseudobulk(uniq, sums / counts[:, None], counts, np.asarray(src.var_names))
  finally:
    if owned:
      src.close()


# ----------------------------------------------------------------------------- alignment


def _show(items: Iterable, n: int = 10) -> str:
  items = list(items)
  return f"{items[:n]}{f' ... ({len(items)} in all)' if len(items) > n else ''}"


def align_genes(pred_genes: pd.Index, real_genes: pd.Index, *, strict: bool = False,
                pred_name: str = "adata_pred", real_name: str = "adata_real"
                ) -> tuple[np.ndarray, list[str]]:
  """The genes shared by both files, in the real file's order.

  Args:
    strict: raise when either file has genes the other lacks.

  Returns:
    `(shared gene names, notes)`.
  """
  in_pred = real_genes.isin(pred_genes)
  shared = np.asarray(real_genes[in_pred])
  only_real = real_genes[~in_pred].tolist()
  only_pred = pred_genes[~pred_genes.isin(real_genes)].tolist()
  if shared.size == 0:
    raise ValueError(
        f"no shared genes between `{pred_name}` ({len(pred_genes)} genes, e.g. "
        f"{pred_genes[:5].tolist()}) and `{real_name}` ({len(real_genes)} genes, e.g. "
        f"{real_genes[:5].tolist()}); both must name genes the same way in `var_names`.")
  notes = []
  if only_real or only_pred:
    if strict:
      raise ValueError(
          f"gene sets differ (strict genes): {len(only_pred)} gene(s) only in `{pred_name}`: "
          f"{_show(only_pred)}; {len(only_real)} gene(s) only in `{real_name}`: "
          f"{_show(only_real)}. Drop strict mode to use the {shared.size} shared genes.")
    notes.append(f"using the {shared.size} shared genes; {len(only_pred)} only in predictions, "
                 f"{len(only_real)} only in real data")
  return shared, notes


UNMATCHED = ("error", "intersect", "keep_real")


def align_perturbations(pred_labels: Sequence[str], real_labels: Sequence[str], *,
                        unmatched: str = "error", pred_name: str = "adata_pred",
                        real_name: str = "adata_real") -> tuple[list[str], list[str], list[str]]:
  """Queries and candidates from the predicted and real perturbation labels.

  Args:
    pred_labels: labels with predictions (control already removed), in the
      order the queries should take.
    real_labels: labels with real cells (control already removed).
    unmatched: ``"error"`` (any label on one side only is an error),
      ``"intersect"`` (queries = candidates = labels on both sides), or
      ``"keep_real"`` (queries = labels on both sides, candidates = every
      real label: real perturbations without a prediction stay as decoys).

  Returns:
    `(queries, candidates, notes)`: queries in the order of `pred_labels`,
    candidates sorted.
  """
  if unmatched not in UNMATCHED:
    raise ValueError(f"unknown `unmatched` {unmatched!r}; choose one of {UNMATCHED}")
  p, r = set(pred_labels), set(real_labels)
  only_pred, only_real = sorted(p - r), sorted(r - p)
  both = [x for x in dict.fromkeys(pred_labels) if x in r]
  if not both:
    raise ValueError(
        f"no perturbation label is both predicted and real: `{pred_name}` has {_show(sorted(p))}, "
        f"`{real_name}` has {_show(sorted(r))}; check `perturbation_key` and the label spelling.")
  if unmatched == "error" and (only_pred or only_real):
    raise ValueError(
        f"perturbation labels differ: {len(only_pred)} predicted but absent from `{real_name}`: "
        f"{_show(only_pred)}; {len(only_real)} real but not predicted: {_show(only_real)}. "
        "Pass unmatched='intersect' (score the shared ones) or 'keep_real' (also keep the "
        "unpredicted real ones as candidates); CLI: --unmatched.")
  notes = []
  if only_pred:
    notes.append(f"{len(only_pred)} predicted perturbation(s) without real cells left out: "
                 f"{_show(only_pred, 5)}")
  if only_real:
    notes.append(f"{len(only_real)} real perturbation(s) without a prediction "
                 f"{'kept as candidates' if unmatched == 'keep_real' else 'left out'}: "
                 f"{_show(only_real, 5)}")
  candidates = sorted(r) if unmatched == "keep_real" else sorted(both)
  return both, candidates, notes


def targets_by_label(labels: np.ndarray, targets: np.ndarray) -> dict[str, list[str]]:
  """Perturbation label -> the distinct targets of its cells, in order of first appearance.

  Args:
    labels: `[n_obs]` perturbation label of each cell.
    targets: `[n_obs]` target gene of each cell (None: no target).

  Returns:
    A dict with an entry (possibly empty) for every label.
  """
  frame = pd.DataFrame({"label": np.asarray(labels, dtype=object),
                        "target": np.asarray(targets, dtype=object)})
  out: dict[str, list[str]] = {str(lab): [] for lab in pd.unique(frame["label"])}
  pairs = frame.dropna().drop_duplicates()
  for lab, tgt in zip(pairs["label"], pairs["target"]):
    out[str(lab)].append(str(tgt))
  return out


def top_variable_genes(profiles: np.ndarray, genes: np.ndarray, n_top_genes: int) -> np.ndarray:
  """The `n_top_genes` genes with the largest variance across profiles, in their original order."""
  if n_top_genes < 1:
    raise ValueError(f"`n_top_genes` must be >= 1, got {n_top_genes}")
  var = profiles.var(axis=0)
  order = np.argsort(-var, kind="stable")[:n_top_genes]
  return genes[np.sort(order)]
