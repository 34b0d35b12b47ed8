"""A model whose unpickling has a visible side effect: it creates the file named in its state.

Logged with ``mlflow.pytorch.log_model(..., serialization_format="pickle")``, it stands for a hostile
model: if the marker file appears, loading it ran code the file carried. The class must be importable
(``helpers.pickled_model`` with ``tests/`` on the path) so that a trusted load can unpickle it.
"""

from __future__ import annotations

from pathlib import Path

from mlflow_transfer.models import TransferNet, build_model


class MarkerNet(TransferNet):
    """alexnet-32 (same state-dict names) that touches ``marker`` when unpickled."""

    def __init__(self, marker: str | Path, num_classes: int = 10):
        base = build_model("alexnet-32", num_classes)
        super().__init__(base.arch, base.embedding, base.head, list(base.analysis_layers.items()))
        self.marker = str(marker)

    def __setstate__(self, state):
        Path(state["marker"]).write_text("unpickled: code from the model file ran\n")
        super().__setstate__(state)
