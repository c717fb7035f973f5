"""Compiled kernels kept on disk as XLA executables, for processes that run them once.

JAX's persistent compilation cache spares a new process the compile, but
not the tracing and lowering that make the cache's key: about 0.1 s of a
1.4 s command on small files. Here a kernel's executable is stored under a
key of everything its program depends on (the function and its static
arguments, the shapes and dtypes of its arguments, the package's source,
JAX and jaxlib, the backend and its devices, and the JAX settings that
change programs) and loaded without tracing: the same executable, so the
same numbers.

Off unless a folder is set (`keep_in`); the command line sets one inside
its cache folder. Entries are written to a temporary file and renamed, so
two processes may share the folder; an entry that cannot be read is
compiled anew and replaced.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from typing import Any, Callable, Optional

import jax
import numpy as np

# Folder of the stored executables (None: every call goes through `jax.jit` as usual).
_dir: Optional[str] = None
# Executables loaded or compiled by this process, by key.
_loaded: dict[str, Any] = {}
# JAX settings that change what a traced function lowers to.
_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_dtype_promotion",
             "jax_numpy_rank_promotion", "jax_default_prng_impl")


def keep_in(directory: Optional[str]) -> None:
  """Stores and reads executables in `directory` from now on (None: off, the default)."""
  global _dir
  _dir = directory
  _loaded.clear()


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
  """SHA-256 of every module of the package: a changed kernel is a new key."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  digest = hashlib.sha256()
  for folder, dirs, names in sorted(os.walk(root)):
    dirs.sort()
    for name in sorted(n for n in names if n.endswith(".py")):
      with open(os.path.join(folder, name), "rb") as f:
        digest.update(name.encode() + b"\0" + f.read())
  return digest.hexdigest()


def _key(name: str, args: tuple, static: dict) -> str:
  leaves, tree = jax.tree_util.tree_flatten(args)
  shapes = [(np.shape(v), str(getattr(v, "dtype", type(v).__name__)),
             bool(getattr(v, "weak_type", False))) for v in leaves]
  import jaxlib

  parts = [name, repr(sorted(static.items())), str(tree), repr(shapes), _source_digest(),
           jax.__version__, jaxlib.__version__, jax.default_backend(),
           repr([(d.platform, d.device_kind, d.id) for d in jax.local_devices()]),
           repr([getattr(jax.config, s, None) for s in _SETTINGS])]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _load(path: str):
  from jax.experimental import serialize_executable

  try:
    with open(path, "rb") as f:
      payload, in_tree, out_tree = pickle.load(f)
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
  except FileNotFoundError:
    return None
  except Exception:  # noqa: BLE001 - a torn, stale or foreign entry: compiled anew
    return None


def _store(path: str, compiled) -> None:
  from jax.experimental import serialize_executable

  try:
    blob = pickle.dumps(serialize_executable.serialize(compiled))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".exe-")
    with os.fdopen(fd, "wb") as f:
      f.write(blob)
    os.replace(tmp, path)
  except Exception:  # noqa: BLE001 - an unwritable folder or an unserialisable program
    pass


def call(jitted: Callable, name: str, *args, **static):
  """`jitted(*args, **static)`, from a stored executable when a folder is set.

  Args:
    jitted: a `jax.jit` function whose keyword arguments `static` are its
      static arguments.
    name: names `jitted` and its compiler options in the key (two jits of
      one function with other options need two names).
    *args: its array arguments (None allowed).
    **static: its static arguments.
  """
  if _dir is None:
    return jitted(*args, **static)
  key = _key(name, args, static)
  compiled = _loaded.get(key)
  if compiled is None:
    path = os.path.join(_dir, f"{key}.exe")
    compiled = _load(path)
    if compiled is None:
      compiled = jitted.lower(*args, **static).compile()
      _store(path, compiled)
    _loaded[key] = compiled
  return compiled(*args)
