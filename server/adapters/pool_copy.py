"""Copying an adapter into its pool pages: what its format says to write, at the placement's offsets."""

import torch

from server.adapters.formats import BaseWeight, format_of
from server.adapters.types import AdapterWeights
from server.memory.adapter_pages import Placement


def copy_into_pool(weights: AdapterWeights, placement: Placement, pool_flat: torch.Tensor,
                   base_weight: BaseWeight | None) -> None:
    """The pool tensors its format writes at page-in (for DoRA also the scale computed from the base weights)."""
    fmt = format_of(weights.ref.format)
    _write(fmt.pool_tensors(weights.ref, weights.factors, base_weight), placement, pool_flat)


def copy_lazy_into_pool(weights: AdapterWeights, placement: Placement, pool_flat: torch.Tensor, factor: str) -> None:
    """One of the format's lazy factors (e.g. Arrow's prototypes), when a step first needs it."""
    _write(format_of(weights.ref.format).lazy_tensors(weights.ref, weights.factors, factor), placement, pool_flat)


def _write(tensors, placement: Placement, pool_flat: torch.Tensor) -> None:
    for key, values in tensors:
        off = placement.offsets[key]
        pool_flat[off : off + values.numel()].copy_(values.reshape(-1))
