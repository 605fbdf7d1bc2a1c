"""Loss terms, one module each, and the methods (``--loss`` values) built from them.

Every module of this package is imported here, so each :class:`LossTerm` subclass with a
``name`` registers itself (:mod:`.base`); :func:`method_terms` gives a method's terms in the
order they add up.

Examples:
    >>> from clip_ping.losses import method_terms, methods
    >>> methods()
    ('clip', 'clip-ping', 'distill', 'distill-fd', 'distill-nn', 'fd', 'relational')
    >>> [term.name for term in method_terms("clip-ping")]
    ['clip', 'neighbor']
"""

from __future__ import annotations

import importlib
import pkgutil

import torch

from .base import TERMS, LossTerm, TermContext, TermInputs
from .clip import ClipLoss
from .distill import DistillLoss
from .neighbor import NeighborLoss, NeighborTargets, neighbor_contrast, target_keys

# A term module needs no line here: importing it registers its terms.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "TERMS",
    "LossTerm",
    "TermContext",
    "TermInputs",
    "ClipLoss",
    "DistillLoss",
    "NeighborLoss",
    "NeighborTargets",
    "neighbor_contrast",
    "target_keys",
    "methods",
    "method_terms",
    "total",
]


def methods() -> tuple[str, ...]:
    """Every ``--loss`` value some term belongs to, ``clip`` first."""
    found = {method for term in TERMS.values() for method in term.methods}
    return tuple(sorted(found, key=lambda method: (method != "clip", method)))


def method_terms(method: str) -> list[type[LossTerm]]:
    """The term classes of ``method``, in the order they add up."""
    terms = [term for term in TERMS.values() if method in term.methods]
    if terms:  # a method of its own terms also has every-method terms (the CLIP term)
        terms += [term for term in TERMS.values() if term.in_every_method and term not in terms]
    if not terms:
        raise ValueError(f"--loss {method!r}: choose one of {', '.join(methods())}")
    return sorted(terms, key=lambda term: (term.order, term.name))


def total(terms: dict[str, torch.Tensor], summed: tuple[str, ...]) -> torch.Tensor:
    """The loss the optimiser minimises: the sum of the ``summed`` names among ``terms``,
    in their order in ``terms``."""
    return sum(value for name, value in terms.items() if name in summed)
