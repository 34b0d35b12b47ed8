"""Input checks at the boundary: every id, name and path that arrives from outside (a URL, a CLI
option, a tag, a manifest) passes one of these before it is used.

Each check returns the value it accepted, or raises the `TransferError` subclass its caller names,
with a message in one style: "Expected <what>; got <repr>. <how to fix>". Imports nothing heavy (no
torch, no MLflow), so the app and the bundle reader can use it.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from .errors import RunLookupError, TransferError

# MLflow's own rule for run ids (mlflow.utils.validation), ASCII only and matched whole: `$` alone
# would accept a trailing newline.
_RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]{0,255}", re.ASCII)


def _shown(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_run_id(value, what: str = "run id", error: type[TransferError] = RunLookupError) -> str:
    """``value`` if it is a well-formed MLflow run (or experiment) id; else ``error``.

    Ids arrive in URLs, tags and command lines and end up in file paths and queries: nothing that
    fails this pattern is looked up, joined to a path or shown unescaped.
    """
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise error(f"Expected a {what} of letters, digits, '_' or '-' (at most 256, as MLflow makes them); "
                    f"got {_shown(value)}. Copy the id from `mlflow ui` or `mlflow runs list`.")
    return value


def check_relative_path(value, what: str = "path", error: type[TransferError] = TransferError) -> str:
    """``value`` if it is a relative POSIX path that stays where it is joined (no absolute path, no
    ``..``, ``.`` or empty segment, no backslash, NUL or control character); else ``error``."""
    if not isinstance(value, str) or not value:
        raise error(f"Expected a {what} as a non-empty relative path; got {_shown(value)}.")
    bad = (value.startswith("/") or "\\" in value or any(ord(ch) < 32 for ch in value)
           or any(part in ("", ".", "..") for part in value.split("/")) or PurePosixPath(value).is_absolute()
           or re.match(r"^[A-Za-z]:", value) is not None)
    if bad:
        raise error(f"Expected a {what} relative to its folder, without '..', '.', empty or absolute parts; "
                    f"got {_shown(value)}.")
    return value


def contained(root: str | Path, relative: str, what: str = "path",
              error: type[TransferError] = TransferError) -> Path:
    """``root / relative`` resolved, after checking that it stays inside ``root`` once symlinks are
    followed (a link pointing out of the folder is refused like ``..``)."""
    check_relative_path(relative, what, error)
    base = Path(root).resolve()
    path = (base / relative).resolve()
    if path != base and base not in path.parents:
        raise error(f"Expected a {what} inside {base}; got {_shown(relative)}, which leads to {path}.")
    return path


def check_no_symlinks(root: str | Path, relative: str, what: str = "path",
                      error: type[TransferError] = TransferError) -> Path:
    """``root / relative`` (not resolved) after checking the relative path and that neither it nor any
    folder between it and ``root`` is a symbolic link: a link inside a folder we read from (a bundle,
    a cache) could point anywhere, so none is followed. ``root`` itself may be a link."""
    check_relative_path(relative, what, error)
    path = Path(root)
    for part in relative.split("/"):
        path = path / part
        if path.is_symlink():
            raise error(f"Expected a {what} of plain files and folders; got {_shown(relative)}, where "
                        f"{path} is a symbolic link. Replace the link by the file itself, or recreate the folder.")
    return path
