"""The attacks of the robustness diagnostics (issue 13): captum.robust's FGSM and PGD, L∞, untargeted,
on images in [0, 1] (the models normalise inside), and the predictions they are scored with.

What shaped the calls (REFERENCES.md, "Verified facts"): captum's loss must be per example — a
mean-reduced loss crashes, and without one it takes −log of the outputs as if they were probabilities
— so a per-example loss is always passed; captum leaves the model's mode alone, so the model runs in
eval mode here and every module's flag is restored; a feature-space attack whose target is the clean
features has gradient 0 at the clean input and moves only with ``random_start=True`` (seeded here
through a forked generator); captum zeroes gradient components below 1e-6, so the losses are chosen
to keep the cross-entropy's (or the distance's) sign steps with a gradient that does not vanish.
PGD's step size is 2.5·ε/steps (Madry et al.'s rule), so the steps can cross the ball and back.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import DiagnosticsError
from ..validation import check_choice, check_int, check_module, check_number

__all__ = ["ATTACKS", "BATCH", "DIR_ATTACKS", "STEP_RULE", "attack_images", "check_epsilon", "check_images",
           "feature_attack", "own_labels", "predict"]

ATTACKS = ("fgsm", "pgd")            # the curves' attacks, each crafted on the model it measures
DIR_ATTACKS = ("output", "feature")  # the teacher's loss that DIR's PGD maximises
STEP_RULE = "2.5*eps/steps"          # PGD's step size, recorded in the manifest
BATCH = 64                           # images per attack batch: gradients of a whole batch at once


def check_epsilon(value, name: str = "epsilon") -> float:
    """An attack radius: a number in [0, 1] (L∞, pixel units of images in [0, 1])."""
    return check_number(value, name, low=0.0, high=1.0,
                        doc="(an L∞ radius in pixel units of images in [0, 1], e.g. 8/255 ≈ 0.031)")


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextlib.contextmanager
def _attacking(model: nn.Module):
    """Eval mode (dropout off, batch-norm running statistics) with every module's flag restored after,
    and gradients on even under the caller's no_grad/inference_mode (captum needs input gradients)."""
    states = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            # PGD hands each step a detached tensor, and captum warns on each that it set requires_grad
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            yield
    finally:
        for m, flag in states.items():
            m.training = flag


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.device.type == "mps" else t.double()  # MPS has no float64


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example (captum needs shape (B,)), a loss whose sign steps are the cross-entropy's.

    The cross-entropy is softplus(m) with m = logsumexp_{j≠y} z_j − z_y, so its input gradient is
    sigmoid(m)·∇m: a positive factor per example, the same signs, the same FGSM and PGD steps. m is
    used: captum treats gradient components below 1e-6 as zero, and a confidently right model's
    cross-entropy gradient (the factor sigmoid(m) ≈ e^m) is far below that, so the attack would leave
    its most confident instances untouched; ∇m does not vanish."""
    if out.shape[1] < 2:  # one class: nothing to push towards
        return out.sum(1) * 0
    others = out.scatter(1, y[:, None], float("-inf"))
    return torch.logsumexp(others, 1) - out.gather(1, y[:, None]).squeeze(1)


def _squared_distance(out: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """‖f(x_adv) − f(x)‖² per example, over its detached value: the same sign steps, a gradient that
    stays above captum's 1e-6 cut-off however small the random start's distance is."""
    d = _wide(out - clean).flatten(1).pow(2).sum(1)
    return d / d.detach().clamp(min=torch.finfo(d.dtype).tiny)


def check_images(images, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{type(images).__name__} {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise DiagnosticsError(f"Expected {name} as a float tensor (N, C, H, W) in [0, 1]; got {got}.")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise DiagnosticsError(f"Expected {name} in [0, 1] (the models normalise inside); got values in "
                               f"[{float(images.min()):.3g}, {float(images.max()):.3g}].")
    return images


def attack_images(model: nn.Module, images: torch.Tensor, labels, *, attack: str, epsilon: float,
                  steps: int = 10, batch_size: int = BATCH) -> torch.Tensor:
    """Untargeted L∞ adversarial images crafted on ``model`` with captum's FGSM or PGD.

    Args:
        images: float (N, C, H, W) in [0, 1] (any device).
        labels: int (N,) in the model's label space: the class whose cross-entropy is raised.
        attack: ``"fgsm"`` (one step of ε) or ``"pgd"`` (``steps`` steps of 2.5·ε/steps, no random start).
        epsilon: the L∞ radius, in [0, 1].

    Returns: float (N, C, H, W) on the CPU, within ε of ``images`` and in [0, 1]; ε = 0 returns the
        images unchanged.
    """
    from captum.robust import FGSM, PGD

    check_module(model)
    check_choice(attack, "attack", ATTACKS)
    epsilon = check_epsilon(epsilon)
    steps = check_int(steps, "steps", low=1)
    images = check_images(images)
    labels = own_labels(labels, len(images), "labels")
    if len(labels) and labels.min() < 0:
        raise DiagnosticsError("Expected labels as class indices >= 0 of the model's own space; got -1 (a class the "
                               "model does not know): attack those rows with the model's own prediction.")
    labels = torch.as_tensor(labels)
    device, out = _device(model), []
    with _attacking(model):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).clone()
            y = labels[start:start + batch_size].to(device)
            if attack == "fgsm":
                adv = FGSM(model, _cross_entropy, lower_bound=0.0, upper_bound=1.0).perturb(x, epsilon, y)
            else:
                adv = PGD(model, _cross_entropy, lower_bound=0.0, upper_bound=1.0).perturb(
                    x, epsilon, 2.5 * epsilon / steps, steps, y, random_start=False, norm="Linf")
            out.append(adv.detach().cpu())
    return torch.cat(out) if out else images.detach().cpu().clone()


def _penultimate(model: nn.Module):
    """x → the input of the model's last Linear layer (ReMoS's penultimate features), hooked, so any
    `TransferNet` or adapted classifier gives it; a model whose last analysis layer is no Linear
    gives its embedding (``embed_and_logits`` or ``embedding``)."""
    layers = getattr(model, "analysis_layers", None)
    last = list(layers.values())[-1] if layers else None
    if isinstance(last, nn.Linear):
        def features(x):
            grabbed = []
            handle = last.register_forward_pre_hook(lambda mod, args: grabbed.append(args[0]))
            try:
                model(x)
            finally:
                handle.remove()
            return grabbed[-1]
        return features
    if hasattr(model, "embed_and_logits"):
        return lambda x: model.embed_and_logits(x)[0]
    if hasattr(model, "embedding"):
        return model.embedding
    raise DiagnosticsError(f"Expected the teacher with a last Linear layer or an `embedding` (its penultimate "
                           f"features); got {type(model).__name__}.")


def feature_attack(model: nn.Module, images: torch.Tensor, *, epsilon: float, steps: int, seed: int,
                    batch_size: int = BATCH) -> torch.Tensor:
    """PGD (``steps`` steps of 2.5·ε/steps) maximising ‖f(x_adv) − f(x)‖² of ``model``'s penultimate
    features (the input of its last Linear layer), from a random start seeded by ``seed``; float (N, C, H, W)
    on the CPU."""
    from captum.robust import PGD

    features, device, out = _penultimate(model), _device(model), []
    with _attacking(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # captum draws the random start from torch's generator of the device
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).clone()
            with torch.no_grad():
                clean = features(x).detach()
            adv = PGD(features, _squared_distance, lower_bound=0.0, upper_bound=1.0).perturb(
                x, epsilon, 2.5 * epsilon / steps, steps, clean, random_start=True, norm="Linf")
            out.append(adv.detach().cpu())
    return torch.cat(out) if out else images.detach().cpu().clone()


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Argmax class (N,) int64 and its softmax probability (N,) float64 of ``model`` on ``images``, in eval
    mode (every module's flag restored)."""
    device, pred, conf = _device(model), [], []
    states = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                p = torch.softmax(model(images[start:start + batch_size].to(device)).float(), 1)
                c, k = p.max(1)
                pred.append(k.cpu().numpy()); conf.append(c.cpu().numpy())
    finally:
        for m, flag in states.items():
            m.training = flag
    if not pred:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(pred).astype(np.int64), np.concatenate(conf).astype(np.float64)


def own_labels(labels, n: int, name: str) -> np.ndarray:
    """Labels in a model's own space, -1 for a class the model does not know."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or (n and labels.min() < -1):
        raise DiagnosticsError(f"Expected {name} as {n} class indices of the model's own space (-1: a class it does "
                               f"not know); got {labels.dtype} {labels.shape}.")
    return labels.astype(np.int64)
