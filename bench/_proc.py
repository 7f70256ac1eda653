"""Process trees for the benchmarks, from /proc: a job's peak memory is its launcher's and all its workers' RSS, and
bench_web_idle.py samples each process's CPU."""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(root: int) -> dict[int, int | None]:
    """``root`` and every process below it: pid -> parent pid (None for ``root``). Walks /proc/PID/task/*/children
    from ``root``, a few reads a process, rather than reading every process of the machine: samplers call this every
    50-100 ms, and their own CPU counts against what they measure."""
    tree: dict[int, int | None] = {}
    pending: list[tuple[int, int | None]] = [(root, None)]
    while pending:
        pid, parent = pending.pop()
        try:
            children = []
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    children += [int(child) for child in handle.read().split()]
        except (FileNotFoundError, ProcessLookupError):  # it ended while being read
            continue
        tree[pid] = parent
        pending += [(child, pid) for child in children]
    return tree


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants."""
    total = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total
