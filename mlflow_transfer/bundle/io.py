"""Symmetric write/read of bundle files, with a manifest that makes a bundle checkable."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..validation import check_no_symlinks, check_relative_path

SCHEMA_VERSION = "1.7.0"  # what each minor version added: docs/ARCHITECTURE.md, "Bundle schema history"
MANIFEST = "manifest.json"
_KINDS = {"table": ".parquet", "array": ".npy", "image": ".png", "json": ".json"}
MAX_MANIFEST_BYTES = 64 << 20  # ~15 MB hold 100,000 entries; more is not a manifest we wrote
# Largest image a reader decodes (~200 MB as RGB): above the biggest sprite a diagnose writes (a 4096-unit
# layer with every neuron important, ~42 M pixels) and below PIL's own bomb limit.
MAX_PNG_PIXELS = 1 << 26
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]*)?", re.ASCII)


@dataclass(frozen=True)
class FileEntry:
    """One file of a bundle: path relative to the bundle root, kind, size in bytes, SHA-256."""

    path: str
    kind: str
    bytes: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return text or type(exc).__name__


def shown(value, limit: int = 80) -> str:
    """``repr(value)``, cut at ``limit`` characters: how a bad value is quoted in a `BundleError`."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _check_name(name: str) -> str:
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or name.endswith("/"):
        raise BundleError(f"bundle entry names are relative paths without '..', got {name!r}")
    return name


class BundleWriter:
    """Writes bundle files into ``root`` (an empty or new folder) and finally the manifest.

    Every ``write_*`` takes a name without extension (``"instances/embedding_target"``) and returns
    the relative path written. Call :meth:`finish` last: only then is the folder a valid bundle.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if any(self.root.iterdir()):
            raise BundleError(f"bundle folder {self.root} is not empty; write a bundle into a new folder")
        self._entries: dict[str, FileEntry] = {}

    def _target(self, name: str, kind: str) -> Path:
        rel = _check_name(name) + _KINDS[kind]
        if rel in self._entries:
            raise BundleError(f"bundle entry {rel} written twice")
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _record(self, path: Path, kind: str) -> str:
        rel = path.relative_to(self.root).as_posix()
        self._entries[rel] = FileEntry(rel, kind, path.stat().st_size, _sha256(path))
        return rel

    def write_array(self, name: str, array: np.ndarray) -> str:
        """Save a numeric/bool array as ``.npy`` (no pickle: object arrays are refused)."""
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise BundleError(f"array {name!r} has dtype object; bundles hold numeric arrays only")
        path = self._target(name, "array")
        np.save(path, array, allow_pickle=False)
        return self._record(path, "array")

    def write_table(self, name: str, columns: dict) -> str:
        """Save a table (column name → equal-length sequence) as Parquet."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise BundleError(f"table {name!r} has columns of different lengths: {lengths}")
        path = self._target(name, "table")
        pq.write_table(pa.table({k: (np.asarray(v) if isinstance(v, np.ndarray) else list(v))
                                 for k, v in columns.items()}), path)
        return self._record(path, "table")

    def write_json(self, name: str, record) -> str:
        """Save a small JSON-able record (dicts, lists, str, numbers, bools, None)."""
        path = self._target(name, "json")
        path.write_text(json.dumps(record, indent=1, sort_keys=True, allow_nan=True))
        return self._record(path, "json")

    def write_png(self, name: str, image: np.ndarray) -> str:
        """Save a uint8 image (H, W), (H, W, 3) or (H, W, 4) as PNG."""
        from PIL import Image

        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise BundleError(f"image {name!r} must be uint8 (H, W[, C]), got {image.dtype} {image.shape}")
        path = self._target(name, "image")
        Image.fromarray(image).save(path, format="PNG")
        return self._record(path, "image")

    def finish(self, **meta) -> dict:
        """Write ``manifest.json`` (``meta`` plus schema version, time and file list); returns it."""
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **meta,
            "files": [asdict(e) for e in sorted(self._entries.values(), key=lambda e: e.path)],
        }
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        os.replace(tmp, self.root / MANIFEST)  # the manifest appears whole or not at all
        return manifest


def add_json_record(root: str | Path, name: str, record) -> dict:
    """Add the JSON record ``name`` to the finished bundle at ``root`` (one this process has just written:
    a record computed from the bundle itself, e.g. its findings) and rewrite its manifest, atomically as
    `BundleWriter.finish` does; returns the new manifest. The bundle must not hold ``name`` already."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    rel = _check_name(name) + _KINDS["json"]
    if any(e["path"] == rel for e in manifest["files"]):
        raise BundleError(f"bundle entry {rel} written twice")
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True, allow_nan=True))
    entry = FileEntry(rel, "json", path.stat().st_size, _sha256(path))
    manifest["files"] = sorted([*manifest["files"], asdict(entry)], key=lambda e: e["path"])
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
    os.replace(tmp, root / MANIFEST)
    return manifest


class BundleReader:
    """Opens a bundle folder; checks the manifest and (by default) every file's size and hash.

    A bundle arrives from a tracking server or a user's folder, so nothing in it is trusted: the
    manifest's structure and types are checked, entry paths must stay inside the bundle (no absolute
    path, no ``..``, no symbolic link on the way), and a file that cannot be parsed as its kind is
    reported like a missing one.

    Raises:
        BundleError: no manifest, an unreadable or malformed manifest, another major schema version, a
            file that is missing, truncated, altered, outside the bundle, or unreadable as its kind.
    """

    DIAGNOSE_AGAIN = "run `mlflow-transfer diagnose` again for this pair"

    def __init__(self, root: str | Path, *, verify: bool = True, fix: str = DIAGNOSE_AGAIN, what: str = "diagnostics"):
        """``fix``: how to remake the bundle, said by every error; ``what``: which kind of bundle it is."""
        self.root = Path(root)
        self.fix, self.what = fix, what
        self.manifest = self._load_manifest()
        self.files = self._entries(self.manifest["files"])
        if verify:
            self.verify()

    def corrupt(self, expected: str, got: str) -> BundleError:
        """The error for a bundle that is not what mlflow-transfer writes, in the "Expected …; got …" style."""
        return BundleError(f"Expected {expected} in bundle {self.root}; got {got}. The bundle is damaged or was "
                           f"not written by mlflow-transfer: {self.fix}")

    def _load_manifest(self) -> dict:
        path = self.root / MANIFEST
        if path.is_symlink():  # it could name any file on the machine
            raise self.corrupt(f"{MANIFEST} as a plain file", "a symbolic link")
        if not path.is_file():
            raise BundleError(f"{self.root} is not a complete {self.what} bundle (no {MANIFEST}); {self.fix}")
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise self.corrupt(f"a {MANIFEST} of at most {MAX_MANIFEST_BYTES >> 20} MiB", f"{size} bytes")
        try:
            manifest = json.loads(path.read_bytes())
        except RecursionError:  # nesting deeper than Python's stack: never a manifest we wrote
            raise BundleError(f"{path} is not valid JSON (nested too deeply); the bundle is corrupt: "
                              f"{self.fix}") from None
        except ValueError as exc:
            raise BundleError(f"{path} is not valid JSON ({_reason(exc)}); the bundle is corrupt: "
                              f"{self.fix}") from None
        if not isinstance(manifest, dict):
            raise self.corrupt(f"{MANIFEST} to hold a JSON object", f"{type(manifest).__name__} {shown(manifest)}")
        version = manifest.get("schema_version")
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise self.corrupt(f"a schema_version like {SCHEMA_VERSION!r} in {MANIFEST}", shown(version))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise BundleError(f"bundle {self.root} has schema version {version}, this "
                              f"mlflow-transfer reads {SCHEMA_VERSION.split('.')[0]}.x; upgrade mlflow-transfer "
                              f"or {self.fix}")
        if not isinstance(manifest.get("files"), list):
            raise self.corrupt(f"a list of files in {MANIFEST}", shown(manifest.get("files")))
        return manifest

    def _entries(self, files: list) -> dict[str, FileEntry]:
        """The manifest's file list, each entry checked for keys, types and a path inside the bundle."""
        out: dict[str, FileEntry] = {}
        for i, e in enumerate(files):
            expected = (f"manifest entry {i} as {{path: relative path, kind: one of {sorted(_KINDS)}, bytes: "
                        "integer >= 0, sha256: 64 hex digits}")
            if not isinstance(e, dict):
                raise self.corrupt(expected, shown(e))
            path, kind, size, digest = (e.get(k) for k in ("path", "kind", "bytes", "sha256"))
            if (kind not in _KINDS or not isinstance(size, int) or isinstance(size, bool) or size < 0
                    or not isinstance(digest, str) or not _SHA256.fullmatch(digest) or not isinstance(path, str)):
                raise self.corrupt(expected, shown(e))
            try:
                check_relative_path(path, "bundle file", BundleError)
            except BundleError:  # absolute, '..', '.': it would read a file outside the bundle
                raise self.corrupt(f"manifest entry {i} to name a file inside the bundle (a relative path "
                                    "without '..', '.', empty or absolute parts)", shown(path)) from None
            if not path.endswith(_KINDS[kind]) or path in out:
                raise self.corrupt(f"manifest entry {i} to be a unique path ending in {_KINDS[kind]} (kind "
                                    f"{kind})", shown(path))
            out[path] = FileEntry(path, kind, size, digest)
        return out

    def _file(self, rel: str) -> Path:
        """``root / rel`` for a manifest entry, refusing symbolic links on the way (checked at each use:
        the folder may change after it was verified)."""
        try:
            return check_no_symlinks(self.root, rel, "bundle file", BundleError)
        except BundleError:
            raise self.corrupt(f"{rel} as a plain file (no symbolic link on its path)", "a symbolic link") from None

    def verify(self) -> None:
        """Check every listed file exists with the recorded size and SHA-256."""
        for entry in self.files.values():
            path = self._file(entry.path)
            if not path.is_file():
                raise BundleError(f"bundle {self.root} is incomplete: {entry.path} is missing")
            if path.stat().st_size != entry.bytes or _sha256(path) != entry.sha256:
                raise BundleError(f"bundle file {entry.path} is corrupt or truncated "
                                  f"(size/hash differ from the manifest): {self.fix}")

    def _path(self, name: str, kind: str) -> Path:
        rel = name + _KINDS[kind]
        if rel not in self.files:
            raise BundleError(f"bundle {self.root} has no {kind} {name!r}; it has "
                              f"{sorted(p for p, e in self.files.items() if e.kind == kind)[:20]}")
        path = self._file(rel)
        if not path.is_file():
            raise BundleError(f"bundle {self.root} is incomplete: {rel} is missing")
        return path

    def _unreadable(self, path: Path, expected: str, exc: BaseException) -> BundleError:
        return self.corrupt(f"{path.relative_to(self.root).as_posix()} to be {expected}",
                             f"a file that cannot be read as one ({_reason(exc)})")

    def names(self, kind: str | None = None, prefix: str = "") -> list[str]:
        """Entry names (without extension), optionally of one kind and under a prefix."""
        return sorted(p[: -len(_KINDS[e.kind])] for p, e in self.files.items()
                      if (kind is None or e.kind == kind) and p.startswith(prefix))

    def read_array(self, name: str) -> np.ndarray:
        """A ``.npy`` array; its header is checked against the file's size before anything is allocated
        (a forged header could ask for terabytes), and pickled (object) arrays are refused."""
        path = self._path(name, "array")
        fmt = np.lib.format
        try:
            with open(path, "rb") as fh:
                version = fmt.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = fmt.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = fmt.read_array_header_2_0(fh)
                else:
                    raise ValueError(f".npy format version {version} is not written by np.save here")
                if dtype.hasobject:
                    raise ValueError("it holds Python objects, which only pickle can read")
                needed = fh.tell() + math.prod(shape) * dtype.itemsize
                if path.stat().st_size < needed:
                    raise ValueError(f"its header promises {shape} {dtype} ({needed} bytes), the file has "
                                     f"{path.stat().st_size}")
                fh.seek(0)
                array = np.load(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise self._unreadable(path, "a numeric .npy array", exc) from None
        return array

    def read_table(self, name: str, columns: list[str] | None = None) -> dict[str, np.ndarray | list]:
        """Columns of a Parquet table (all, or only ``columns``): numeric columns as numpy arrays, others
        as lists."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self._path(name, "table")
        try:
            with pa.OSFile(str(path)) as fh:  # one file, never a dataset folder
                table = pq.read_table(fh, columns=columns)
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise self._unreadable(path, "a Parquet table", exc) from None
        out = {}
        for col in table.column_names:
            values = table.column(col)
            try:
                out[col] = values.to_numpy()
            except pa.ArrowException:  # nested or string columns stay Python lists
                out[col] = values.to_pylist()
            if out[col].__class__ is np.ndarray and out[col].dtype == object:
                out[col] = values.to_pylist()
        return out

    def read_required_table(self, name: str, columns: tuple[str, ...], why: str = "") -> dict[str, np.ndarray | list]:
        """`read_table` of a table the bundle must hold with at least ``columns``: missing, or without one of
        them, is a damaged bundle (``why``: what says it should be there, for the message)."""
        if name not in self.names("table", name):
            raise self.corrupt(f"table {name}{f' ({why})' if why else ''}", "no such table")
        table = self.read_table(name)
        missing = [c for c in columns if c not in table]
        if missing:
            raise self.corrupt(f"table {name} with columns {list(columns)}", f"no column(s) {missing}")
        return table

    def read_json(self, name: str):
        path = self._path(name, "json")
        try:
            return json.loads(path.read_bytes())
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python's stack
            raise self._unreadable(path, "a JSON record", exc) from None

    def read_png(self, name: str) -> np.ndarray:
        """A PNG image as an array; larger than `MAX_PNG_PIXELS` is refused before it is decoded."""
        from PIL import Image

        path = self._path(name, "image")
        try:
            with Image.open(io.BytesIO(path.read_bytes()), formats=["PNG"]) as img:
                if img.width * img.height > MAX_PNG_PIXELS:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                img.load()  # decode here, so a truncated file fails inside this try
                return np.asarray(img)
        except Image.DecompressionBombError as exc:
            raise self._unreadable(path, f"a PNG image of at most {MAX_PNG_PIXELS:,} pixels", exc) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL's "not/broken PNG" errors
            raise self._unreadable(path, "a PNG image", exc) from None


def validate_bundle(root: str | Path) -> dict:
    """Open and fully verify the bundle at ``root``; returns its manifest (the self-check command)."""
    return BundleReader(root, verify=True).manifest
