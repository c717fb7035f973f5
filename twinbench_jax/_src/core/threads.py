"""A kept pool of worker threads for the host-side loops that release the GIL.

Pseudobulk sums and the CPU kernels of `native` run their blocks on these
threads. One pool per thread count is kept for the life of the process: new
threads on every call would spread the blocks' memory over new allocator
arenas, and the process would grow. A forked child starts a pool of its own.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Iterable, Optional, Sequence

# Most threads used at once (more rarely pay off: these loops are memory bound).
MAX_THREADS = 8


def n_threads() -> int:
  """Worker threads to use: the cores this process may run on, at most `MAX_THREADS`."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
    cores = os.cpu_count() or 1
  return max(1, min(cores, MAX_THREADS))


def map_in_order(fn: Callable, items: Sequence, threads: int,
                 prepare: Optional[Callable] = None) -> Iterable:
  """`fn(prepare(item))` over `items` on up to `threads` threads, yielding the results in order.

  `prepare` (default: none) runs on the calling thread, in order, as items are
  handed out. At most twice `threads` items are in flight, so memory stays
  bounded by a few blocks; an exception cancels what has not started and
  propagates.
  """
  prepared = items if prepare is None else map(prepare, items)
  if threads <= 1 or len(items) <= 1:
    yield from map(fn, prepared)
    return
  executor = pool(threads)
  pending, it = [], iter(prepared)
  try:
    for item in it:
      pending.append(executor.submit(fn, item))
      if len(pending) >= 2 * threads:
        break
    while pending:
      result = pending.pop(0).result()
      nxt = next(it, _DONE)
      if nxt is not _DONE:
        pending.append(executor.submit(fn, nxt))
      yield result
  finally:
    for future in pending:
      future.cancel()
    for future in pending:  # nothing may still read the caller's arrays once we return
      if not future.cancelled():
        future.exception()


def run_all(fn: Callable, items: Sequence, threads: int) -> list:
  """`[fn(item) for item in items]` on up to `threads` threads, the first item on this one.

  Returns once every item is done, even when one failed (whose exception then
  propagates): nothing may still write the caller's arrays after the return.
  """
  if threads <= 1 or len(items) <= 1:
    return [fn(item) for item in items]
  from concurrent.futures import wait

  futures = [pool(threads).submit(fn, item) for item in items[1:]]
  try:
    first = fn(items[0])
  finally:
    wait(futures)
  return [first, *(f.result() for f in futures)]


@functools.lru_cache(maxsize=None)
def pool(threads: int):
  """The process's pool of `threads` worker threads."""
  from concurrent.futures import ThreadPoolExecutor

  return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="twinbench")


# A forked child has none of the parent's threads: it starts its own pool.
if hasattr(os, "register_at_fork"):
  os.register_at_fork(after_in_child=pool.cache_clear)

_DONE = object()
