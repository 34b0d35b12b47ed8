"""Symmetric write/read of bundle files, with a manifest that makes a bundle checkable."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import BundleError

SCHEMA_VERSION = "1.1.0"  # 1.1: weights/{model}/c<i>/{layer} matrices
MANIFEST = "manifest.json"
_KINDS = {"table": ".parquet", "array": ".npy", "image": ".png", "json": ".json"}


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


class BundleReader:
    """Opens a bundle folder; checks the manifest and (by default) every file's size and hash.

    Raises:
        BundleError: no manifest, an unreadable manifest, another major schema version, or a file
            that is missing, truncated or altered.
    """

    def __init__(self, root: str | Path, *, verify: bool = True):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise BundleError(f"{self.root} is not a complete diagnostics bundle (no {MANIFEST}); "
                              "run `mlflow-transfer diagnose` again for this pair")
        try:
            self.manifest = json.loads(path.read_text())
        except ValueError as exc:
            raise BundleError(f"{path} is not valid JSON ({exc}); the bundle is corrupt, diagnose again") from None
        version = str(self.manifest.get("schema_version", ""))
        major = version.split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise BundleError(f"bundle {self.root} has schema version {version or 'none'}, this "
                              f"mlflow-transfer reads {SCHEMA_VERSION.split('.')[0]}.x; upgrade mlflow-transfer "
                              "or diagnose the pair again")
        self.files = {e["path"]: FileEntry(**e) for e in self.manifest.get("files", [])}
        if verify:
            self.verify()

    def verify(self) -> None:
        """Check every listed file exists with the recorded size and SHA-256."""
        for entry in self.files.values():
            path = self.root / entry.path
            if not path.is_file():
                raise BundleError(f"bundle {self.root} is incomplete: {entry.path} is missing")
            if path.stat().st_size != entry.bytes or _sha256(path) != entry.sha256:
                raise BundleError(f"bundle file {entry.path} is corrupt or truncated "
                                  f"(size/hash differ from the manifest); diagnose the pair again")

    def _path(self, name: str, kind: str) -> Path:
        rel = name + _KINDS[kind]
        if rel not in self.files:
            raise BundleError(f"bundle {self.root} has no {kind} {name!r}; it has "
                              f"{sorted(p for p, e in self.files.items() if e.kind == kind)[:20]}")
        return self.root / rel

    def names(self, kind: str | None = None, prefix: str = "") -> list[str]:
        """Entry names (without extension), optionally of one kind and under a prefix."""
        return sorted(p[: -len(_KINDS[e.kind])] for p, e in self.files.items()
                      if (kind is None or e.kind == kind) and p.startswith(prefix))

    def read_array(self, name: str) -> np.ndarray:
        return np.load(self._path(name, "array"), allow_pickle=False)

    def read_table(self, name: str) -> dict[str, np.ndarray | list]:
        """Columns of a Parquet table: numeric columns as numpy arrays, others as lists."""
        import pyarrow.parquet as pq

        table = pq.read_table(self._path(name, "table"))
        out = {}
        for col in table.column_names:
            values = table.column(col)
            try:
                out[col] = values.to_numpy()
            except Exception:  # nested or string columns stay Python lists
                out[col] = values.to_pylist()
            if out[col].__class__ is np.ndarray and out[col].dtype == object:
                out[col] = values.to_pylist()
        return out

    def read_json(self, name: str):
        return json.loads(self._path(name, "json").read_text())

    def read_png(self, name: str) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(self._path(name, "image").read_bytes())) as img:
            return np.asarray(img)


def validate_bundle(root: str | Path) -> dict:
    """Open and fully verify the bundle at ``root``; returns its manifest (the self-check command)."""
    return BundleReader(root, verify=True).manifest
