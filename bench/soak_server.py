"""The soak's server child (``python -m bench.soak_server``, started by ``bench/soak.py``):
trickle-trio with the settings ``trickle-trio serve`` would use (autocreate on, loopback,
port 0), the idle timeout and sweep interval the parent gives, and a sampler beside it.

It prints ``{"url": ...}`` once, then one JSON line per ``--interval`` with its own RSS
(psutil), ``trio.lowlevel.current_statistics().tasks_living``, the names of the living
tasks, the number of objects the garbage collector tracks, the largest types, trio's
deadline heap and the registry's gauges; and, after a full GC, one more line for each
line read from stdin (the parent's last sample, with the RSS after ``malloc_trim``).
Stdin closed: the parent went away, the server stops.

Imports: stdlib, psutil, trio and trickle_trio's server.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import sys
import time
from collections import Counter
from functools import partial
from typing import Any

import psutil
import trio


def rss_kib() -> int:
    return int(psutil.Process().memory_info().rss) // 1024


async def serve_child(
    interval: float, idle_timeout: float, sweep_interval: float, gc_thresholds: str | None
) -> None:
    """Run the server; print a sample every ``interval`` seconds, and after a full GC
    for each line read from stdin (the parent's last sample). Stdin closed: stop.

    ``gc_thresholds`` ("700,10,10"): override the collector thresholds the server sets at
    start-up (a diagnostic: is RSS growth garbage waiting for a rare full collection?)."""
    from trickle_trio.config import Settings
    from trickle_trio.server import run_server

    settings = Settings(
        host="127.0.0.1",
        port=0,
        autocreate=True,
        idle_timeout=idle_timeout,
        sweep_interval=sweep_interval,
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(run_server, settings))
        registry = server.registry
        if gc_thresholds:
            gc.set_threshold(*(int(part) for part in gc_thresholds.split(",")))

        def sample(*, full: bool = False) -> None:
            stats = trio.lowlevel.current_statistics()
            line: dict[str, Any] = {
                "t": time.monotonic(),
                "rss_kib": rss_kib(),
                "tasks": stats.tasks_living,
                "task_names": sorted(task_names()),
                "py_objects": len(gc.get_objects()),
                "types": dict(
                    Counter(type(o).__qualname__ for o in gc.get_objects()).most_common(12)
                ),
                "deadline_heap": deadline_heap_size(),
                "gc_runs": [generation["collections"] for generation in gc.get_stats()],
                "rss_trimmed_kib": None,
                **registry.gauges(),
            }
            if full:
                # How much of the RSS is only free heap that malloc has not handed back to
                # the kernel yet.
                line["rss_trimmed_kib"] = trimmed_rss_kib()
            print(json.dumps(line), flush=True)

        async def periodic(*, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            while True:
                await trio.sleep(interval)
                sample()

        async def on_request(*, task_status: trio.TaskStatus[None]) -> None:
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            task_status.started()
            buffer = b""
            while data := await stdin.receive_some():
                buffer += data
                while b"\n" in buffer:
                    _, buffer = buffer.split(b"\n", 1)
                    gc.collect()
                    sample(full=True)
            nursery.cancel_scope.cancel()  # the parent went away

        await nursery.start(on_request)
        await nursery.start(periodic)
        # The first sample (the idle baseline) counts the sampler's own two tasks.
        print(json.dumps({"url": server.url}), flush=True)
        gc.collect()
        sample(full=True)


def deadline_heap_size() -> int | None:
    """Entries in trio's deadline heap (private; diagnostic only). Trio drops stale
    entries lazily, once there are 1000 more than twice the live ones, so a few hundred
    finished ``move_on_after`` scopes stay referenced from there: bounded, not a leak."""
    try:
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
        return len(runner.deadlines._heap)
    except AttributeError:
        return None


def trimmed_rss_kib() -> int | None:
    """RSS after glibc's ``malloc_trim(0)`` (None where there is no glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_kib()


def task_names() -> list[str]:
    """The name of every living trio task (to tell what a grown task count is)."""
    names: list[str] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--sweep-interval", type=float, required=True)
    parser.add_argument("--gc-thresholds", help="gc.set_threshold(...) after start-up")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(
            serve_child, args.interval, args.idle_timeout, args.sweep_interval, args.gc_thresholds
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
