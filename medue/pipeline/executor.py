"""Local execution of the per-volume job: in-process, a process pool, or one worker per GPU."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Iterator, Sequence

from medue.device import device_count
from medue.errors import InvalidConfigError
from medue.io import InputItem
from medue.pipeline.job import JobContext, process_item, read_ahead_needed, read_volume
from medue.records import ItemMarker


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``; ``None`` -> ``(0, 1)``."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise InvalidConfigError([f"--shard must look like i/N (e.g. 0/4), got {text!r}"]) from exc
    if n < 1 or not 0 <= i < n:
        raise InvalidConfigError([f"--shard {text}: need N >= 1 and 0 <= i < N"])
    return i, n


def select_shard(items: Sequence[InputItem], shard: tuple[int, int]) -> list[InputItem]:
    """Items of shard ``i`` of ``N``: every N-th item of the id-sorted list, so shards never overlap."""
    i, n = shard
    return [it for k, it in enumerate(sorted(items, key=lambda it: it.item_id)) if k % n == i]


def worker_devices(device: str, workers: int) -> list[str]:
    """Device per worker: round-robin over GPUs for ``cuda``/``auto`` on a GPU machine, else ``cpu``."""
    gpus = device_count()
    if device in ("auto", "cuda") and gpus > 0:
        return [f"cuda:{w % gpus}" for w in range(workers)]
    if device == "auto":
        return ["cpu"] * workers
    return [device] * workers


def _init_worker(threads: int) -> None:
    """Pool worker set-up: its share of the cores for torch, and death with the parent process (Linux)."""
    import torch

    torch.set_num_threads(threads)
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers end when the pool is shut down


def _with_read_ahead(items: Sequence[InputItem], ctx: JobContext, *, resume: bool) -> Iterator[ItemMarker]:
    """One worker, reading item k + 1 in a thread while item k is protected, checked and written.

    At most one volume is read ahead (two in memory); items skipped on resume are not read. The markers are the
    ones :func:`process_item` writes without read-ahead: only when the read happens changes.
    """
    items = list(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medue-read-ahead") as reader:
        def start(k: int) -> Future | None:
            if k >= len(items) or not read_ahead_needed(items[k], ctx, resume=resume):
                return None
            return reader.submit(read_volume, items[k], ctx)

        pending = start(0)
        for k, item in enumerate(items):
            current, pending = pending, start(k + 1)
            yield process_item(item, ctx, resume=resume, prefetched=current)


def execute_local(items: Sequence[InputItem], ctx: JobContext, *, workers: int = 1, resume: bool = True,
                  devices: Sequence[str] | None = None) -> Iterator[ItemMarker]:
    """Run ``process_item`` over ``items`` and yield each marker as it completes (completion order)."""
    devices = list(devices or worker_devices(ctx.device, workers))
    if workers <= 1 and ctx.read_ahead:
        yield from _with_read_ahead(items, ctx.with_device(devices[0]), resume=resume)
        return
    if workers <= 1:
        for item in items:
            yield process_item(item, ctx.with_device(devices[0]), resume=resume)
        return
    threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else mp.cpu_count()) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(process_item, item, ctx.with_device(devices[k % len(devices)]), resume=resume)
                   for k, item in enumerate(items)]
        for fut in as_completed(futures):
            yield fut.result()
