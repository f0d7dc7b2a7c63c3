"""The unified pool's storage: one preallocated tensor, cut into pages, viewed as KV blocks."""

import torch

from server.memory.eviction import Eviction
from server.memory.page_pool import PagePool


class DevicePool:
    """pages (num_pages, page_elems). A page is one KV block for every layer: (L, 2, bs, kvh, hd)."""

    def __init__(self, num_pages, num_layers, block_size, num_kv_heads, head_dim, dtype, device,
                 eviction: Eviction | None = None):
        self.num_layers, self.block_size = num_layers, block_size
        self.kv_shape = (num_layers, 2, block_size, num_kv_heads, head_dim)
        self.page_elems = num_layers * 2 * block_size * num_kv_heads * head_dim
        self.pages = torch.zeros(num_pages, self.page_elems, dtype=dtype, device=device)
        self.book = PagePool(num_pages, eviction)

    @staticmethod
    def pages_for_budget(pool_mb: int, num_layers, block_size, num_kv_heads, head_dim, dtype) -> int:
        page_bytes = num_layers * 2 * block_size * num_kv_heads * head_dim * torch.finfo(dtype).bits // 8
        return max(1, pool_mb * 2**20 // page_bytes)

    def kv_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k_cache, v_cache), each a strided view (num_pages, bs, kvh, hd) of the pages."""
        kv = self.pages.view(self.pages.shape[0], *self.kv_shape)
        return [(kv[:, layer, 0], kv[:, layer, 1]) for layer in range(self.num_layers)]
