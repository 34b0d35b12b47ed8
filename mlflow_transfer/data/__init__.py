"""Data domains: the built-in offline pair and loaders for users' own data.

``load_domain(name, ...)`` is the single entry point; ``DOMAINS`` lists every name with the options
it takes. Built-in: ``printed-digits`` (synthetic, SVHN-like), ``printed-digits-clean`` (the same
digits on plain backgrounds: a second source) and ``handwritten-digits`` (scikit-learn's real digits,
MNIST-like). From a local folder: ``mnist``, ``svhn``, ``usps``
(torchvision formats, never downloaded) and ``imagefolder`` (Office-31 layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import DataError
from .domain import Domain
from .splits import DomainSplits, align_classes, select_classes, split_domain


@dataclass(frozen=True)
class DomainKind:
    """How to load one kind of domain: the loader and which recipe options it accepts."""

    loader: Callable[..., Domain]
    options: frozenset
    needs_root: bool
    description: str


def _printed(**kw):
    from .printed import load_printed_digits

    return load_printed_digits(**kw)


def _printed_clean(**kw):
    from .printed import load_printed_digits

    return load_printed_digits(clean=True, **kw)


def _handwritten(seed, **kw):
    from .handwritten import load_handwritten_digits

    return load_handwritten_digits(**kw)


def _external(fn_name):
    def load(seed, **kw):
        from . import external

        return getattr(external, fn_name)(**kw)

    return load


def _imagefolder(seed, **kw):
    from .imagefolder import load_imagefolder

    return load_imagefolder(**kw)


DOMAINS: dict[str, DomainKind] = {
    "printed-digits": DomainKind(
        _printed, frozenset({"size"}), False,
        "digits rendered from matplotlib's fonts over photo crops (built in, SVHN-like)"),
    "printed-digits-clean": DomainKind(
        _printed_clean, frozenset({"size"}), False,
        "digits rendered from matplotlib's fonts on plain backgrounds, no clutter (built in)"),
    "handwritten-digits": DomainKind(
        _handwritten, frozenset(), False,
        "scikit-learn's 1,797 real handwritten digits (built in, MNIST-like)"),
    "mnist": DomainKind(_external("load_mnist"), frozenset({"root", "split"}), True,
                        "torchvision MNIST files under <root>/MNIST/raw"),
    "svhn": DomainKind(_external("load_svhn"), frozenset({"root", "split"}), True,
                       "SVHN .mat files (train_32x32.mat, test_32x32.mat) in <root>"),
    "usps": DomainKind(_external("load_usps"), frozenset({"root", "split"}), True,
                       "USPS files (usps.bz2, usps.t.bz2) in <root>"),
    "imagefolder": DomainKind(_imagefolder, frozenset({"root", "subset"}), True,
                              "<root>/<subset>/images/<class>/* or <root>/<subset>/<class>/* (Office-31)"),
}


def load_domain(name: str, *, image_size: int, seed: int = 0, **options) -> Domain:
    """Load the domain called ``name`` with images resized to ``image_size`` × ``image_size``.

    ``seed`` drives the synthetic domains (other loaders are deterministic without it).
    ``options`` are the recipe's options for that domain (see ``DOMAINS[name].options``); ``None``
    values are dropped so loaders keep their defaults.
    """
    kind = DOMAINS.get(name)
    if kind is None:
        raise DataError(f"unknown domain {name!r}; expected one of {sorted(DOMAINS)}")
    options = {k: v for k, v in options.items() if v is not None}
    extra = set(options) - kind.options
    if extra:
        raise DataError(f"domain {name!r} does not take option(s) {sorted(extra)}; "
                        f"it takes {sorted(kind.options) or 'none'}")
    if kind.needs_root and not options.get("root"):
        raise DataError(f"domain {name!r} reads a local folder: set its `root` ({kind.description})")
    return kind.loader(image_size=image_size, seed=seed, **options)


__all__ = ["DOMAINS", "Domain", "DomainSplits", "align_classes", "load_domain", "select_classes", "split_domain"]
