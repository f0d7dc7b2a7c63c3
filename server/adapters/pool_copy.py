"""Copying an adapter into its pool pages: what its format says to write, at the placement's offsets."""

import torch

from server.adapters.formats import BaseWeight, format_of
from server.adapters.types import AdapterWeights
from server.memory.adapter_pages import Placement


def copy_into_pool(weights: AdapterWeights, placement: Placement, pool_flat: torch.Tensor,
                   base_weight: BaseWeight | None) -> None:
    """Every pool tensor of the adapter's format (for DoRA also the scale computed from the base weights)."""
    fmt = format_of(weights.ref.format)
    for key, values in fmt.pool_tensors(weights.ref, weights.factors, base_weight):
        off = placement.offsets[key]
        pool_flat[off : off + values.numel()].copy_(values.reshape(-1))
