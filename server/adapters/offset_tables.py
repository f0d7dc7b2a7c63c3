"""Per resident adapter, where each of its pool factors starts, as (layer, module) tables for the runner."""

import torch

from server.adapters.types import MODULES
from server.memory.adapter_pages import Placement


class OffsetTables:
    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self._tables: dict[int, dict[str, torch.Tensor]] = {}  # id -> factor -> (L, M) int64, -1 = not there

    def build(self, adapter_id: int, placement: Placement, factors: tuple[str, ...]) -> None:
        tables = {f: torch.full((self.num_layers, len(MODULES)), -1, dtype=torch.int64) for f in factors}
        for (layer, m, factor), off in placement.offsets.items():
            tables[factor][layer, MODULES.index(m)] = off
        self._tables[adapter_id] = tables

    def __contains__(self, adapter_id: int) -> bool:
        return adapter_id in self._tables

    def table(self, adapter_id: int, factor: str) -> torch.Tensor | None:
        """(L, M) int64 offsets of one factor; None when the adapter's format has no such factor."""
        return self._tables[adapter_id].get(factor)

    def drop(self, adapter_id: int) -> None:
        self._tables.pop(adapter_id, None)
