"""Time travel's numbers (issue 14): per-epoch fidelity over a trained pair's whole timeline, and the
per-epoch seconds for 5,000 points against the issue's 10 s goal.

Needs a finished pair with per-epoch checkpoints, e.g. the demo pair made by (from an empty folder, which
gets ./mlruns):
    PYTHONPATH=<repo> <repo>/.venv/bin/python -m mlflow_transfer.cli main --recipe <repo>/recipes/digits.yaml \\
        --no-diagnose --tracking-uri sqlite:////tmp/tt/mlflow.db

    PYTHONPATH=. .venv/bin/python benchmarks/bench_timetravel.py --tracking-uri sqlite:////tmp/tt/mlflow.db \\
        --target-run-id <id> [--per-class 50] [--space penultimate,embedding] [--speed-points 5000]

Each epoch's checkpoint embeds the sample built as `diagnose` builds it (`build_instances`, seed 0), and
`project_timeline` gets that embedding and the model's head. Two spaces: ``penultimate`` (the default
options: the input of the head's last Linear is projected, that Linear is the head — DVI's setting) and
``embedding`` (``penultimate=False``: the embedding as given, through the whole head). For each space and
position it prints the seconds, the fidelity numbers and "val ceil" (the share of validation points
predicted as the majority of their 15 nearest training points in high dimension: about the best a smooth
map trained on the training points can do for held-out PPR); then it times `project_timeline` on
``--speed-points`` points (a seeded subset of all the pair's images) over three late epochs of the target
run, after warming umap-learn's numba compilation, and prints each epoch's seconds over the 10 s goal.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from mlflow_transfer.diagnostics.timetravel import (  # noqa: E402
    EpochInput,
    TimeTravelOptions,
    penultimate_split,
    project_timeline,
)
from mlflow_transfer.tracking.context import prepare_data  # noqa: E402
from mlflow_transfer.tracking.diagnose import build_instances  # noqa: E402
from mlflow_transfer.tracking.lookup import CHECKPOINT_DIR, load_checkpoint  # noqa: E402
from mlflow_transfer.tracking.pairs import resolve_pair  # noqa: E402

GOAL_S = 10.0
SHOWN = ("nn_train_15", "nn_val_15", "boundary_nn_15", "ppr", "ppr_train", "ppr_val", "temporal_corr",
         "trustworthiness", "accuracy")


def _epochs(run_id: str) -> list[int]:
    names = [a.path.rsplit("/", 1)[-1] for a in MlflowClient().list_artifacts(run_id, CHECKPOINT_DIR)]
    return sorted(e for e in (int(n[6:9]) for n in names if n.startswith("epoch_")) if e >= 1)


def _inputs(timeline, images: torch.Tensor, class_maps, loading_cpu: list | None = None):
    """Each checkpoint's embedding of the images and its head, as the tracking layer passes them (the CPU
    seconds each took appended to ``loading_cpu``)."""
    for (phase, run_id, epoch), class_map in zip(timeline, class_maps):
        clock = time.process_time()
        net = load_checkpoint(run_id, epoch).eval()
        with torch.inference_mode():
            reps = torch.cat([net.embedding(images[i:i + 256]) for i in range(0, len(images), 256)]).numpy()
        if loading_cpu is not None:
            loading_cpu.append(time.process_time() - clock)
        yield EpochInput(reps.astype(np.float32), net.head.eval(), class_map)


def _options(space: str) -> TimeTravelOptions:
    # the default projects the penultimate layer (the head's last Linear's input); "embedding" the model's
    # embedding as given, through the whole head
    return TimeTravelOptions(penultimate=space == "penultimate")


def _class_maps(timeline, data):
    runs = {r: mlflow.get_run(r) for _, r, _ in timeline}
    import json

    from mlflow_transfer.tags import TAGS
    maps = []
    for _, run_id, _ in timeline:
        classes = json.loads(runs[run_id].data.tags[TAGS.classes])
        maps.append(np.array([data.pair_classes.index(c) for c in classes], dtype=np.int64))
    return maps


def _fidelity(timeline, data, per_class: int, space: str, options: TimeTravelOptions) -> None:
    inst = build_instances(data, per_class, 0)
    train = inst.split == 0
    print(f"\n## {space}: {len(train)} points ({int(train.sum())} train), sample_per_class {per_class}")
    print("pos phase  ep      s " + " ".join(f"{m:>9.9}" for m in SHOWN) + "  val ceil")
    start = time.perf_counter()
    seen = []

    def kept(inputs):
        for item in inputs:
            seen.append(item)
            yield item

    frames = project_timeline(kept(_inputs(timeline, inst.images, _class_maps(timeline, data))), train,
                              options, labels=inst.labels)
    for pos, ((phase, _, epoch), frame) in enumerate(zip(timeline, frames)):
        print(f"{pos:3d} {phase:6s} {epoch:2d} {frame.seconds:6.1f} "
              + " ".join(f"{frame.metrics[m]:9.3f}" for m in SHOWN) + f" {_ceiling(seen.pop(), train, options.penultimate):9.3f}",
              flush=True)
    print(f"whole timeline (checkpoint loading and embedding included): {time.perf_counter() - start:.1f} s wall; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def _ceiling(epoch: EpochInput, train: np.ndarray, penultimate: bool) -> float:
    """Share of validation points the head predicts as the majority of their 15 nearest training points
    (high-D, in the projected space): what a smooth map learned on the training points can hope to preserve
    for held-out points."""
    from sklearn.neighbors import NearestNeighbors

    pre, _ = penultimate_split(epoch.head) if penultimate else (torch.nn.Identity(), epoch.head)
    with torch.inference_mode():
        x = torch.from_numpy(epoch.representations)
        pred = epoch.head(x).argmax(dim=1).cpu().numpy()
        reps = pre(x).numpy()
    near = NearestNeighbors(n_neighbors=15).fit(reps[train]).kneighbors(reps[~train], return_distance=False)
    votes = np.array([np.bincount(row, minlength=pred.max() + 1).argmax() for row in pred[train][near]])
    return float(np.mean(votes == pred[~train]))


def _speed(timeline, data, n_points: int, space: str, options: TimeTravelOptions) -> None:
    from umap.umap_ import fuzzy_simplicial_set

    t = time.perf_counter()
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    knn = np.argsort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :15]
    dist = np.sqrt(np.take_along_axis(((x[:, None] - x[None]) ** 2).sum(-1), knn, 1)).astype(np.float32)
    fuzzy_simplicial_set(x, 15, np.random.RandomState(0), "euclidean", knn_indices=knn, knn_dists=dist)
    print(f"\n## speed, {space}: umap-learn numba warm-up (once per process) {time.perf_counter() - t:.1f} s")
    inst = build_instances(data, None, 0)
    keep = np.sort(np.random.default_rng(0).choice(len(inst.labels), min(n_points, len(inst.labels)), replace=False))
    train = inst.split[keep] == 0
    late = timeline[-3:]
    loading: list[float] = []
    frames = project_timeline(_inputs(late, inst.images[keep], _class_maps(late, data), loading), train, options)
    print(f"{len(keep)} points ({int(train.sum())} train), the target run's last {len(late)} epochs")
    seconds, cpu = [], []
    clock = time.process_time()
    for (phase, _, epoch), frame in zip(late, frames):
        # CPU seconds of this process (all threads) beside the wall time: on a machine shared with other
        # work the wall time mostly measures the wait for a core
        seconds.append(frame.seconds)
        cpu.append(time.process_time() - clock - loading[-1])
        print(f"  {phase} epoch {epoch}: {frame.seconds:.1f} s wall (ratio to the {GOAL_S:g} s goal "
              f"{frame.seconds / GOAL_S:.2f}), {cpu[-1]:.1f} s CPU (ratio {cpu[-1] / GOAL_S:.2f}; loading the "
              f"checkpoint and embedding the images, excluded, {loading[-1]:.1f} s CPU); load average {os.getloadavg()[0]:.1f}; NN@15 "
              f"{frame.metrics['nn_train_15']:.2f}, PPR {frame.metrics['ppr']:.3f}", flush=True)
        clock = time.process_time()
    print(f"  warm-started epochs: mean {np.mean(seconds[1:]):.1f} s wall, {np.mean(cpu[1:]):.1f} s CPU "
          f"(ratios {np.mean(seconds[1:]) / GOAL_S:.2f}, {np.mean(cpu[1:]) / GOAL_S:.2f}); the first trains "
          f"from scratch: {seconds[0]:.1f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--target-run-id", required=True)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--space", default="penultimate,embedding")
    parser.add_argument("--speed-points", type=int, default=5000)
    parser.add_argument("--no-fidelity", action="store_true")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    pair = resolve_pair(target_run_id=args.target_run_id)
    data = pair.data or prepare_data(pair.recipe)
    timeline = [("source", pair.source_run_id, e) for e in _epochs(pair.source_run_id)]
    timeline += [("target", pair.target_run_id, e) for e in _epochs(pair.target_run_id)]
    print(f"timeline: {len(timeline)} positions; torch threads {torch.get_num_threads()}")
    print(f"options: {TimeTravelOptions().as_dict()}")
    for space in args.space.split(","):
        if not args.no_fidelity:
            _fidelity(timeline, data, args.per_class, space, _options(space))
        _speed(timeline, data, args.speed_points, space, _options(space))


if __name__ == "__main__":
    main()
