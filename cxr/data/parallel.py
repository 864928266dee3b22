"""The process pool that indexing and image decoding share: chunks of work over a few processes, in order,
with a live progress bar in interactive sessions only. Workers end with the process that started them (a killed
build leaves no orphans)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, Iterator

from tqdm import tqdm

from cxr import progress


def _default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def _mp_context():
    """fork where it is safe (Linux, no TensorFlow/JAX/torch threads in this process): workers start in
    milliseconds; spawn otherwise (each worker then imports cxr.data, about half a second)."""
    heavy = any(name in sys.modules for name in ("tensorflow", "jax", "torch"))
    return get_context("fork" if sys.platform == "linux" and not heavy else "spawn")


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker as soon as its parent process dies, even by SIGKILL. Linux: the kernel
    sends SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread polls the parent's id every second."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def parallel_map(fn: Callable[[list], Any], items: list, workers: int | None, desc: str,
                 chunk: int = 32) -> Iterator[Any]:
    """Yield fn(chunk) for consecutive chunks of `items`, in order, over a process pool, with a progress bar.
    Small jobs (or workers=1) run in this process: a pool costs about a second to start."""
    workers = _default_workers() if workers is None else max(1, workers)
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    # small jobs get no bar; others a live bar in interactive sessions only (cxr.progress), never in logs
    with (progress.bar(total=len(items), desc=desc) if len(items) >= 100 else tqdm(disable=True)) as bar:
        if workers == 1 or len(items) < 4 * chunk:
            for part in chunks:
                result = fn(part)
                bar.update(len(part))
                yield result
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_mp_context(),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            for part, result in zip(chunks, pool.map(fn, chunks)):
                bar.update(len(part))
                yield result
