"""The diagnostics bundle: a folder of Parquet tables, ``.npy`` arrays, PNG images and JSON records,
described by ``manifest.json`` (schema version, runs, options, software, one entry per file).

`BundleWriter` builds a bundle in a folder (the tracking layer logs it whole); `BundleReader` opens
one, refuses an unknown major schema version, and checks every file against its size and SHA-256.
`PairBundle` (in `records`) is the typed reader of a pair bundle and the app's only door to it (`TimelineBundle`,
in `timeline`, the same for a pair's training timeline, issue 14); it needs
numpy, pyarrow and PIL, never torch. `write_pair_bundle` lives in `mlflow_transfer.bundle.writer`
(it takes the diagnostics engine's `PairDiagnostics`, so importing it imports torch): import it from there.
No pickle anywhere: arrays are saved with ``allow_pickle=False``. A bundle is untrusted input: the reader
checks the manifest's types, keeps every path inside the bundle (no ``..``, absolute path or symbolic
link), and turns a file that is not what its manifest says (garbage, truncated, an oversized PNG) into
one `BundleError` naming the bundle and the file.
"""

from .io import SCHEMA_VERSION, BundleReader, BundleWriter, FileEntry, validate_bundle
from .records import PairBundle
from .timeline import TimelineBundle, TimelineFrame, write_timeline_bundle

__all__ = ["SCHEMA_VERSION", "BundleReader", "BundleWriter", "FileEntry", "PairBundle", "TimelineBundle",
           "TimelineFrame", "validate_bundle", "write_timeline_bundle"]
