"""What a diagnosis computes: :class:`DiagnoseOptions`, one default for each choice.

Kept apart from the engine and free of torch, so the command line takes its option defaults from
here (one default, not one per entry point) without importing the numerics.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DiagnosticsError

CANDIDATE_STEPS = (8, 16, 32, 50, 100)  # what n_steps "auto" tries, smallest first (diagnostics/steps.py)


@dataclass(frozen=True)
class DiagnoseOptions:
    """What to compute; every field is recorded in the bundle manifest."""

    sample_per_class: int | None = 10       # analysed instances per class, domain and split (None = all);
                                            # demo pair: median stability 0.90 (benchmarks/results_stability.txt)
    layers: tuple[str, ...] | None = None   # analysis layers to analyse (None = all)
    classes: tuple[str, ...] | None = None  # classes to analyse (None = all)
    n_steps: int | str = "auto"             # conductance integration steps: "auto" = per model, the smallest
                                            # of 8/16/32/50/100 within completeness_tolerance (diagnostics/steps.py)
    method: str = "trapezoid"               # conductance sum: "trapezoid" or one of captum's methods
                                            # (diagnostics/conductance.py)
    baseline: float = 0.0                   # constant baseline image value
    top_fraction: float = 0.1               # important neurons: share of each layer (paper: 10 %)
    weight_fraction: float = 0.01           # important weights: share of each layer pair
    weight_max_instances: int | None = 200  # per class; more are sampled (seeded) and recorded
    folds: int = 10                         # CV folds of the domain classifier
    svm_max_rows: int = 2000                # domain classifier rows per domain; both domains are sampled
                                            # (seeded, noted) to the smaller one's count, at most this
    patches: int = 9                        # top activating patches per neuron and domain
    similar: int = 5                        # patches also for each important neuron's k most similar in the other model
    patch_size: int = 24                    # px of each stored patch
    cka_max_instances: int = 500            # target instances used for CKA (seeded sample)
    tsne_gradient: str = "auto"             # openTSNE negative gradient: "fft", "bh" or "auto" (by size)
    batch_size: int = 4                     # instances per conductance batch (small is faster on CPU)
    seed: int = 0
    feature_vis_steps: int = 32             # activation-maximisation steps per feature visualisation (0 = off)
    stability_resamples: int = 20           # bootstrap resamples for the important sets' stability (>= 10)
    completeness_tolerance: float = 0.01    # n_steps "auto": relative completeness error allowed (1 %)
    # issue 13 (diagnostics/robustness.py): FGSM/PGD accuracy curves of both models on the target validation
    # set, the defect inheritance rate (DIR) of the teacher's attacks, and the attack's conductance shift
    robustness: bool = True                 # False: no robustness records
    robustness_epsilons: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)  # L∞ radii, [0, 1] images
    robustness_pgd_steps: int = 10          # the curves' PGD steps (step size 2.5·ε/steps)
    dir_pgd_steps: int = 40                 # DIR's PGD steps (ReMoS: 40)
    dir_epsilon: float = 8 / 255            # DIR's and the conductance shift's L∞ radius
    robustness_examples: int = 8            # inherited adversarial examples stored per DIR attack
    robustness_max_rows: int = 500          # target validation rows attacked (a seeded sample beyond)


def resolve_n_steps(value) -> int | str:
    """``"auto"`` or a whole number >= 1 (an int, or its digits as text, as the command line passes it)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isascii() and text.isdigit() and len(text) <= 6:
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise DiagnosticsError(f"Expected n_steps as 'auto' (per model, the smallest of {list(CANDIDATE_STEPS)} "
                           f"meeting the completeness tolerance) or a whole number >= 1; got {str(value)[:40]!r}. "
                           "Pass --n-steps auto or e.g. --n-steps 50.")
