"""Process-level behaviour: malloc tuning for the command line and benchmarks (never called on
import), the one progress reporter every long loop uses, and the one device resolver
(:func:`resolve_device`) that training, diagnose and feature visualisation share.

glibc hands every freed block above ``M_MMAP_THRESHOLD`` (a few MB after its dynamic adjustment)
back to the kernel, so the next same-sized tensor arrives as fresh pages that the kernel must fault
in and zero. Conductance allocates tens of MB per op, batch after batch, so it keeps freed memory
in the heap instead (measurements: ``benchmarks/results_notes.txt``). The cost is that the process
keeps up to 1 GiB it no longer uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

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


DEVICES = ("auto", "cpu", "cuda", "mps")  # what --device / runtime.device accept


def available_devices() -> list[str]:
    """The device kinds torch can use in this process, CPU first (e.g. ``["cpu", "cuda"]``)."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str = "auto"):
    """The ``torch.device`` that ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:<i>``, ``mps``) stands for.

    ``auto`` is CUDA when present, else MPS, else the CPU — so on a machine without an accelerator it is
    the CPU and results are those of a CPU run. An explicit device that is absent is a user error
    naming the devices present and the fix, never a silent fallback (a run asked for a GPU must not
    quietly take hours on the CPU).

    Raises:
        TransferError: an unknown name, or a device this machine does not have.
    """
    import torch

    from .errors import TransferError

    text = name.strip().lower() if isinstance(name, str) else name
    kind, _, index = text.partition(":") if isinstance(text, str) else ("", "", "")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise TransferError(f"Expected a device among {list(DEVICES)} (or cuda:<index>); got {name!r}. "
                            "Pass --device auto (the best device present) or --device cpu.")
    present = available_devices()
    if kind == "auto":
        kind = "cuda" if "cuda" in present else "mps" if "mps" in present else "cpu"
        return torch.device(kind)
    if kind not in present or (index and int(index) >= torch.cuda.device_count()):
        count = f" ({torch.cuda.device_count()} CUDA device(s))" if "cuda" in present else ""
        raise TransferError(f"Expected device {text!r} to be present; got only {present}{count} on this "
                            f"machine. Pass --device auto (the best device present) or --device cpu, or "
                            f"set runtime.device=auto in the recipe.")
    return torch.device(text)


def quiet_library_progress(stream: TextIO | None = None) -> None:
    """Off a terminal (under ``mlflow run``), turn MLflow's artifact download bars off: each would print
    a line of carriage returns per download. A user's own setting of the variable is kept."""
    if not (stream or sys.stderr).isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def progress(iterable: Iterable[T], desc: str, unit: str = "it", *, total: int | None = None,
             leave: bool = True, enabled: bool = True, stream: TextIO | None = None,
             mininterval: float = 0.1) -> "Progress[T] | Iterable[T]":
    """Iterate over ``iterable`` while reporting progress on ``stream`` (default stderr).

    On a terminal: a tqdm bar. Anywhere else (``mlflow run``, CI, a log file) a bar's carriage
    returns and escape codes become noise, so plain lines are printed instead: one each time another
    10 % is done (every step when there are 10 or fewer), with the elapsed seconds — at most 10
    lines per loop. A transient bar (``leave=False``, e.g. the batches inside an epoch) prints
    nothing off a terminal: the loop around it reports. ``enabled=False`` returns ``iterable``.

    The result iterates like ``iterable`` and has tqdm's ``set_postfix(**values)``, whose values
    end the following lines.
    """
    if not enabled:
        return iterable
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, unit=unit, total=total, leave=leave, file=stream,
                    mininterval=mininterval)
    return Progress(iterable, desc, unit, total=total, stream=stream if leave else None)


class Progress(Iterator[T]):
    """Plain-line progress for streams that are not terminals (see :func:`progress`)."""

    def __init__(self, iterable: Iterable[T], desc: str, unit: str, *, total: int | None,
                 stream: TextIO | None):
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self._it = iter(iterable)
        self.desc, self.unit, self.total, self.stream = desc, unit, total, stream
        self.done, self.postfix = 0, ""
        self._pending = False  # an item was handed out and its step is under way
        self._next_tenth = 1
        self._start = time.monotonic()

    def __iter__(self) -> "Progress[T]":
        return self

    def __next__(self) -> T:
        # A step counts as done when the next item is asked for, so its line follows its work (and
        # any set_postfix made during it).
        if self._pending:
            self.done += 1
            self._pending = False
            self._report()
        try:
            item = next(self._it)
        except StopIteration:
            if self.total is None and self.done and self._next_tenth == 1:
                self._next_tenth = 2
                self._line()  # unknown length: one line when the loop ends
            raise
        self._pending = True
        return item

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _report(self) -> None:
        if self.total and self.done * 10 >= self._next_tenth * self.total:
            self._line()
            self._next_tenth = self.done * 10 // self.total + 1

    def _line(self) -> None:
        if self.stream is None:
            return
        done = self.done
        share = f"{done}/{self.total} {self.unit} ({100 * done // self.total} %)" if self.total else \
            f"{done} {self.unit}"
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {share}, {time.monotonic() - self._start:.1f} s{tail}", file=self.stream,
              flush=True)
