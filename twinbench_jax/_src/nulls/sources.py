"""Null replicates as given to `tb.precomputed_null`, read as `[Q, G]` numpy blocks.

Arrays, AnnData objects (checked by class name) or ``.h5ad`` paths; anndata is
imported only when a file is read (a slow import), never with the array core.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np


def is_anndata(obj: Any) -> bool:
  """Whether `obj` is an AnnData object (checked by class name: anndata is not imported)."""
  return any(c.__name__ == "AnnData" for c in type(obj).__mro__)


def load_profile(item: Any, name: str, layer: Optional[str]) -> Any:
  """An array, an AnnData object (rows as they are) or an ``.h5ad`` path -> `[Q, G]` numpy.

  Args:
    item: an array-like, a scipy sparse matrix, an AnnData object or a path.
    name: the argument's name, for error messages.
    layer: AnnData layer to read instead of `X`.

  Returns:
    A jax array as it is; anything else as a dense numpy array.

  Raises:
    FileNotFoundError: a path that is not a file.
    KeyError: a `layer` the AnnData object does not have.
  """
  if isinstance(item, (str, os.PathLike)):
    if not os.path.isfile(item):
      raise FileNotFoundError(f"`{name}`: no file at {os.fspath(item)!r}")
    import anndata  # imported only when a file is given (a slow import)
    item = anndata.read_h5ad(item)
  if is_anndata(item):
    if layer is None:
      mat = item.X
    elif layer in item.layers:
      mat = item.layers[layer]
    else:
      raise KeyError(f"`{name}`: could not find layer {layer!r} in `adata.layers`; "
                     f"available: {sorted(item.layers.keys())}")
    item = mat
  if hasattr(item, "toarray"):  # scipy sparse
    item = item.toarray()
  if isinstance(item, jax.Array):
    return item
  return np.asarray(item)


class NullSource:
  """Reads null replicates `lo .. hi-1` as one `[hi - lo, Q, G]` numpy block, checked."""

  def __init__(self, null_predictions: Any, shape: tuple, layer: Optional[str]):
    self.shape, self.layer = shape, layer
    self.stacked = not isinstance(null_predictions, (list, tuple))
    if self.stacked:
      if (isinstance(null_predictions, (str, os.PathLike))
          or is_anndata(null_predictions)):
        raise TypeError("`null_predictions` must be a [B, Q, G] array or a sequence of B "
                        "replicates (arrays, AnnData objects or .h5ad paths), got one "
                        f"{type(null_predictions).__name__}")
      if not hasattr(null_predictions, "shape"):
        null_predictions = np.asarray(null_predictions)
      got = tuple(null_predictions.shape)
      if len(got) != 3 or got[1:] != shape:
        raise ValueError(f"`null_predictions` must have shape (B, Q, G) = (B, {shape[0]}, "
                         f"{shape[1]}), got {got}")
      self.n_null = got[0]
    else:
      self.n_null = len(null_predictions)
    if self.n_null < 1:
      raise ValueError("`null_predictions` has zero null replicates (B = 0); need B >= 1")
    self.items = null_predictions

  def read(self, lo: int, hi: int) -> np.ndarray:
    if self.stacked:
      block = np.asarray(self.items[lo:hi])
    else:
      block = np.stack([self._one(i) for i in range(lo, hi)])
    bad = ~np.isfinite(block)
    if bad.any():
      b, q, g = (int(v) for v in np.argwhere(bad)[0])
      raise ValueError(f"`null_predictions` replicate {lo + b} holds non-finite values "
                       f"(NaN or inf), first at query {q}, feature {g}")
    return block

  def _one(self, i: int) -> np.ndarray:
    arr = np.asarray(load_profile(self.items[i], f"null_predictions[{i}]", self.layer))
    if arr.shape != self.shape:
      raise ValueError(f"`null_predictions[{i}]` must have shape (Q, G) = {self.shape}, got "
                       f"{arr.shape}")
    return arr
