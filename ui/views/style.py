"""One colour and marker convention for every view (paper §5): red = source, blue = target."""

from mlflow_transfer.regions import CLASS_PALETTE, class_color  # noqa: F401 -- the one palette, shared with the regions

SOURCE = "#d62728"
TARGET = "#1f77b4"
MODEL_MARKER = {"source": "x", "target": "circle"}  # crosses = source, circles = target
DATASET_COLOR = {"source_train": "#ff7f0e", "source_val": "#9467bd", "target_train": "#2ca02c",
                 "target_val": "#17becf"}
DATASET_LABEL = {"source_train": "source train", "source_val": "source validation",
                 "target_train": "target train", "target_val": "target validation"}
