"""Compiled kernels kept on disk as XLA executables, for processes that run them once.

JAX's persistent compilation cache spares a new process the compile, but
not the tracing and lowering that make the cache's key: about 0.1 s of a
1.4 s command on small files. Here a kernel's executable is stored under a
key of everything its program depends on (the function and its static
arguments, the shapes and dtypes of its arguments, the package's source,
JAX and jaxlib, the backend and its devices, and the JAX settings that
change programs) and loaded without tracing: the same executable, so the
same numbers.

Only a kernel compiled by this module is stored: an executable that JAX
read from its own persistent cache does not serialise whole on the CPU
(the copy fails to run in a new process, "Function ... not found"). So the
compile for an entry asks for an option at its default value, which gives
it a cache key of its own, with JAX's cache writes held off meanwhile; a
compile that still came from JAX's cache (counted by a `jax.monitoring`
listener) is used but not stored. An entry that fails on its first run in
a process is removed and the call goes through `jax.jit`.

Off unless a folder is set (`keep_in`); the command line sets one inside
its cache folder. Entries are written to a temporary file and renamed, so
two processes may share the folder; an entry that cannot be read is
compiled anew and replaced.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
from typing import Any, Callable, Optional

import jax
import numpy as np

from twinbench_jax._src.core import files

# Folder of the stored executables (None: every call goes through `jax.jit` as usual).
_dir: Optional[str] = None
# Executables loaded or compiled by this process, by key.
_loaded: dict[str, Any] = {}
# Persistent-cache reads seen by this process (`_count_cache_hits`).
_cache_hits = [0]
# Asked of every compile for an entry: XLA's default, so the same program, under a key that
# JAX's persistent cache does not hold.
_OWN_COMPILE = {"xla_cpu_enable_fast_math": False}
_MIN_COMPILE_TIME = "jax_persistent_cache_min_compile_time_secs"
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
    files.write_whole(path, blob)
  except Exception:  # noqa: BLE001 - an unwritable folder or an unserialisable program
    pass


def _count_cache_hits(event: str, **kwargs) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _cache_hits[0] += 1


@functools.lru_cache(maxsize=1)
def _listen() -> None:
  jax.monitoring.register_event_listener(_count_cache_hits)


def _compile_own(jitted: Callable, args: tuple, static: dict):
  """`(compiled, storable)`: a compile of this process, or else one read from JAX's cache."""
  _listen()
  hits = _cache_hits[0]
  min_time = getattr(jax.config, _MIN_COMPILE_TIME)
  jax.config.update(_MIN_COMPILE_TIME, 1e9)  # no entry in JAX's cache under the own key
  try:
    compiled = jitted.lower(*args, **static).compile(compiler_options=_OWN_COMPILE)
  except Exception:  # noqa: BLE001 - an XLA without the option: the plain compile, not stored
    return jitted.lower(*args, **static).compile(), False
  finally:
    jax.config.update(_MIN_COMPILE_TIME, min_time)
  return compiled, _cache_hits[0] == hits


def _first_run(compiled, args: tuple):
  """The outputs of a loaded executable's first call, or None when it fails to run."""
  try:
    return jax.block_until_ready(compiled(*args))
  except Exception:  # noqa: BLE001 - an entry that does not run here: removed, compiled anew
    return None


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
  if compiled is not None:
    return compiled(*args)
  path = os.path.join(_dir, f"{key}.exe")
  compiled = _load(path)
  if compiled is not None:
    out = _first_run(compiled, args)
    if out is not None:
      _loaded[key] = compiled
      return out
    with contextlib.suppress(OSError):
      os.remove(path)
  compiled, storable = _compile_own(jitted, args, static)
  if storable:
    _store(path, compiled)
  _loaded[key] = compiled
  return compiled(*args)
