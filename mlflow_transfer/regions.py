"""Class colours and decision-region images: one palette for the app's points and the regions drawn
behind them (DVI's background), and the names of the fidelity numbers that say how far such a picture can
be trusted — torch-free, so the engine, the bundle and the app share one copy."""

from __future__ import annotations

import numpy as np

# DVI's fidelity measures per timeline position (computed by `diagnostics.fidelity`, stored by `bundle.timeline`)
FIDELITY_METRICS = ("nn_train_10", "nn_train_15", "nn_train_20", "nn_val_10", "nn_val_15", "nn_val_20",
                    "boundary_nn_15", "ppr", "ppr_train", "ppr_val", "temporal_corr", "trustworthiness", "accuracy")
CLASS_PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                 "#666666", "#17becf", "#bcbd22", "#8c564b", "#9edae5"]


def class_color(index: int) -> str:
    return CLASS_PALETTE[index % len(CLASS_PALETTE)]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def region_image(grid_class: np.ndarray, grid_gap: np.ndarray) -> np.ndarray:
    """An RGB image (G, G, 3) uint8 of decision regions, as DVI draws them: each cell in its class's colour
    (`class_color` of the class index), mixed with white by how undecided it is — full colour where the
    top-1 − top-2 probability gap is 1, white where it is 0, so boundaries are light. Row 0 is the top
    (largest y) of the grid, as images are drawn."""
    grid_class = np.asarray(grid_class)
    gap = np.clip(np.nan_to_num(np.asarray(grid_gap, dtype=np.float32)), 0.0, 1.0)
    if grid_class.ndim != 2 or grid_class.shape != gap.shape:
        raise ValueError(f"Expected grid_class and grid_gap of one (G, G) shape; got {grid_class.shape} "
                         f"and {gap.shape}")
    palette = np.array([_rgb(c) for c in CLASS_PALETTE], dtype=np.float32)
    colour = palette[np.mod(grid_class.astype(np.int64), len(CLASS_PALETTE))]
    # brightness from the gap; sqrt keeps confident regions saturated and only the band near a boundary pale
    share = np.sqrt(gap)[..., None]
    return np.round(255.0 * (1.0 - share) + colour * share).astype(np.uint8)
