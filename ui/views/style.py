"""One colour and marker convention for every view (paper §5): red = source, blue = target."""

SOURCE = "#d62728"
TARGET = "#1f77b4"
MODEL_MARKER = {"source": "x", "target": "circle"}  # crosses = source, circles = target
DATASET_COLOR = {"source_train": "#ff7f0e", "source_val": "#9467bd", "target_train": "#2ca02c",
                 "target_val": "#17becf"}
DATASET_LABEL = {"source_train": "source train", "source_val": "source validation",
                 "target_train": "target train", "target_val": "target validation"}
CLASS_PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                 "#666666", "#17becf", "#bcbd22", "#8c564b", "#9edae5"]


def class_color(index: int) -> str:
    return CLASS_PALETTE[index % len(CLASS_PALETTE)]
