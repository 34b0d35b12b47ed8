"""A process tree read from /proc (Linux): the descendants of a process and their CPU seconds, for the tests'
socket checks and the benchmarks' CPU meters."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    return text[text.rfind(")") + 2:].split()


def descendants(root: int) -> set[int]:
    """``root`` and every live process below it."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(_stat(entry.name)[1])
            except (OSError, IndexError, ValueError):  # ended meanwhile
                continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def cpu_seconds(pids) -> dict[int, float]:
    """pid → CPU seconds (user + system) of each live process of ``pids``."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for pid in pids:
        try:
            fields = _stat(pid)
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return out
