"""Process-level tuning for the command line and benchmarks (never called on import).

glibc hands every freed block above ``M_MMAP_THRESHOLD`` (a few MB after its dynamic adjustment)
back to the kernel, so the next same-sized tensor arrives as fresh pages that the kernel must fault
in and zero. Conductance allocates tens of MB per op, batch after batch; keeping freed memory in the
heap made it ≈ 1.3× faster (`benchmarks/bench_conductance.py --n 64 --batch-size 4`: 9.0 s before,
6.7 s after, captum alike). Training allocates the same way (not measured). The cost is that the
process keeps up to 1 GiB it no longer uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory instead of returning it to the kernel.

    Returns:
        True when the settings were applied, False where the C library is not glibc (e.g. macOS,
        musl) — then nothing changes.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
