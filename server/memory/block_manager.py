"""KV blocks per sequence, drawn from the unified page pool. No torch here.

With a prefix cache, a table's first pages may be cached blocks shared with other sequences:
releasing a table drops this sequence's hold on those (they stay cached) and frees the rest.
"""

from server.memory.page_pool import KV, PagePool
from server.memory.prefix_cache import PrefixCache


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(self, pool: PagePool, block_size: int, prefix_cache: PrefixCache | None = None):
        self.pool = pool
        self.block_size = block_size
        self.prefix_cache = prefix_cache
        assert prefix_cache is None or prefix_cache.block_size == block_size

    def blocks_needed(self, block_table: list[int], num_tokens: int) -> int:
        """Extra pages a sequence with this table needs to hold num_tokens in total."""
        return max(0, blocks_for(num_tokens, self.block_size) - len(block_table))

    def can_grow(self, block_table: list[int], num_tokens: int) -> bool:
        return self.blocks_needed(block_table, num_tokens) <= self.pool.num_available()

    def grow(self, block_table: list[int], num_tokens: int) -> None:
        """Extend block_table in place so it holds num_tokens."""
        n = self.blocks_needed(block_table, num_tokens)
        if n:
            block_table.extend(self.pool.allocate(n, KV))

    def release(self, block_table: list[int]) -> None:
        """Leaf first: a chain's deeper cached blocks become idle before (so are evicted before) its root."""
        cache = self.prefix_cache
        for page in reversed(block_table):
            if cache is not None and cache.is_cached(page):
                cache.release(page)
            else:
                self.pool.free([page])
        block_table.clear()

    def slot(self, block_table: list[int], position: int) -> int:
        return block_table[position // self.block_size] * self.block_size + position % self.block_size
