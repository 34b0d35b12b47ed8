"""Train and evaluate a `TransferNet`; the caller decides what to do with each epoch's results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from ..config import TrainConfig
from ..runtime import progress


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced.

    Attributes:
        epoch: 0 for the state before training, then 1..epochs.
        metrics: ``{"loss": mean train cross-entropy, "acc_<split>": accuracy in [0, 1], ...}``
            (no loss at epoch 0).
        model: the model after that epoch (the live object: copy its state to keep it).
    """

    epoch: int
    metrics: dict[str, float]
    model: nn.Module


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``dataset`` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # follow the model
    for x, y in _loader(dataset, batch_size, False, 0):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit(model: nn.Module, train_set: Dataset, eval_sets: Mapping[str, Dataset], cfg: TrainConfig, *,
        seed: int, on_epoch: Callable[[EpochResult], None], desc: str = "train",
        device: torch.device | str | None = None) -> None:
    """Train ``model`` on ``train_set`` for ``cfg.epochs`` epochs with cross-entropy.

    Before the first epoch and after every epoch, the model is evaluated on each of ``eval_sets``
    (name → dataset; reported as ``acc_<name>``) and ``on_epoch`` is called with the results.
    Frozen parameters (``requires_grad=False``) are left out of the optimiser. With
    ``cfg.schedule == "cosine"`` the learning rate decays from ``cfg.lr`` to 0 over all batches.
    ``device`` (e.g. from `mlflow_transfer.runtime.resolve_device`): the model is moved there and
    each batch with it; None keeps the model where it is. Shuffling and initialisation draw from the
    CPU generator either way, so a CPU run is unchanged by the option.
    """
    if device is not None:
        model.to(device)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    torch.manual_seed(seed)
    optimizer = _optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = _loader(train_set, cfg.batch_size, True, seed)
    steps = cfg.epochs * len(train_loader)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
                 if cfg.schedule == "cosine" else None)

    def report(epoch: int, extra: dict[str, float]) -> None:
        metrics = dict(extra)
        metrics.update({f"acc_{name}": evaluate(model, ds) for name, ds in eval_sets.items()})
        on_epoch(EpochResult(epoch, metrics, model))

    report(0, {})
    epochs = progress(range(1, cfg.epochs + 1), desc=desc, unit="epoch")
    for epoch in epochs:
        model.train()
        total_loss, seen = 0.0, 0
        for x, y in progress(train_loader, desc=f"{desc} epoch {epoch}", unit="batch", leave=False,
                             mininterval=1.0):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * len(y)
            seen += len(y)
        report(epoch, {"loss": total_loss / max(seen, 1)})
        epochs.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}")
