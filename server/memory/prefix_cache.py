"""Automatic prefix caching: full KV blocks shared by content, kept in the unified pool. No torch here.

Choices, and why:
- A block is identified by a hash chain: hash((parent block's hash, the block's token ids, the
  sequence's LoRA identity)). The identity is content-addressed (server/engine/lora_identity.py):
  an adapter's digest of its weights and math config, a mixture's sorted (digest, weight) pairs,
  () for the base model. KV computed under one identity is never served to another, and an adapter
  reloaded under the same name with other weights gets a new identity, so no stale KV (the bug
  vLLM's name-keyed cache has). The dict is keyed by the hash but each block keeps its full key and a
  look-up compares it, so a hash collision is a miss, never wrong KV (short of two different parent
  chains colliding on a 64-bit hash with the same tokens and identity).
- Full blocks only. A partial last block is recomputed rather than shared copy-on-write: at most
  block_size - 1 tokens of prefill, and no page is ever written by two sequences.
- A look-up returns the longest chain of cached blocks, capped so that at least one token is left
  to compute: its logits are the ones sampled.
- Blocks are registered as soon as they are full and computed, so sequences running side by side
  with one prefix share it; two that computed the same block in one step keep one copy. A page is
  refcounted by the sequences whose tables hold it; at 0 it becomes cached-idle (kept, evictable),
  not free.
- Eviction: the pool's one policy across idle cached blocks and idle adapters (page_pool.py,
  eviction.py: LRU, or cost-aware GreedyDual). A sequence releases its table leaf first, so a
  chain's deeper blocks get older stamps than its shallower ones and leaves go first; a block with
  cached children is never evicted (its children would become unreachable but still hold pages).
  Under LRU a later release has a larger stamp, so the first childless idle block is the victim;
  the cost policy also weighs a block's uses (sequences that held it), so the victim is searched.
"""

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from server.memory.eviction import Stamp
from server.memory.page_pool import KV, PagePool

BlockKey = tuple[int | None, tuple[int, ...], Hashable]  # (parent hash, token ids, LoRA identity)


def block_key(parent_hash: int | None, token_ids: Sequence[int], identity: Hashable) -> BlockKey:
    return (parent_hash, tuple(token_ids), identity)


def block_hash(parent_hash: int | None, token_ids: Sequence[int], identity: Hashable) -> int:
    return hash(block_key(parent_hash, token_ids, identity))


@dataclass(slots=True)
class CachedBlock:
    key: BlockKey
    hash: int
    parent: int | None  # the page of the cached parent block counting this one as a child
    refs: int = 0  # sequences whose block tables hold this page
    uses: int = 1  # sequences that have held it: 1 + its hits (the cost policy's re-use estimate)
    children: int = 0  # cached blocks whose parent this is


@dataclass(slots=True)
class PrefixStats:
    queried_tokens: int = 0  # tokens of sequences looked up
    hit_tokens: int = 0  # of those, found cached
    evictions: int = 0  # blocks evicted


class PrefixCache:
    """Cached full KV blocks by hash; a Reclaimer of the pool for the idle ones."""

    owner = KV

    def __init__(self, pool: PagePool, block_size: int):
        self.pool = pool
        self.block_size = block_size
        self._page_of: dict[int, int] = {}  # block hash -> page
        self._blocks: dict[int, CachedBlock] = {}  # page -> block
        self._idle: OrderedDict[int, Stamp] = OrderedDict()  # page -> stamp of its last release, smallest first
        self.stats = PrefixStats()
        pool.add_reclaimer(self)

    # look-up and sharing

    def match(self, token_ids: Sequence[int], identity: Hashable, max_blocks: int) -> list[tuple[int, int]]:
        """The longest chain of cached blocks over token_ids' full blocks: [(page, hash)], at most max_blocks.

        No side effects: take() the pages to hold them."""
        bs, chain, parent = self.block_size, [], None
        for i in range(min(max_blocks, len(token_ids) // bs)):
            key = block_key(parent, token_ids[i * bs : (i + 1) * bs], identity)
            h = hash(key)
            page = self._page_of.get(h)
            if page is None or self._blocks[page].key != key:
                break
            chain.append((page, h))
            parent = h
        return chain

    def num_idle(self, pages: Sequence[int]) -> int:
        """How many of these cached pages are idle now (taking them makes them unavailable to others)."""
        return sum(1 for p in pages if p in self._idle)

    def take(self, pages: Sequence[int]) -> None:
        """One more holder of each page (a sequence starting from a cached prefix)."""
        for p in pages:
            block = self._blocks[p]
            block.refs += 1
            block.uses += 1
            self._idle.pop(p, None)

    def record_query(self, queried: int, hit: int) -> None:
        self.stats.queried_tokens += queried
        self.stats.hit_tokens += hit

    def register(self, page: int, parent_hash: int | None, token_ids: Sequence[int], identity: Hashable
                 ) -> tuple[int, int] | None:
        """A sequence's private page now holds a full computed block: cache it, held by that sequence.

        Returns (block hash, the page the sequence's table should hold). When an equal block is cached
        already (computed side by side), that page is taken instead and the private one freed, so a
        table's cached blocks always form one chain from its root (a holder of a block holds its parent).
        None on a hash collision with a different block: the page stays private."""
        key = block_key(parent_hash, token_ids, identity)
        h = hash(key)
        assert page not in self._blocks, f"page {page} is cached already"
        existing = self._page_of.get(h)
        if existing is not None:
            if self._blocks[existing].key != key:
                return None
            self.take([existing])
            self.pool.free([page])
            return h, existing
        parent = self._page_of.get(parent_hash) if parent_hash is not None else None
        if parent is not None:
            self._blocks[parent].children += 1
        self._page_of[h] = page
        self._blocks[page] = CachedBlock(key, h, parent, refs=1)
        return h, page

    def is_cached(self, page: int) -> bool:
        return page in self._blocks

    def release(self, page: int) -> None:
        """One holder fewer; the last one leaves the block cached-idle."""
        block = self._blocks[page]
        assert block.refs > 0, f"cached page {page} released more often than taken"
        block.refs -= 1
        if block.refs == 0:
            self._idle[page] = self.pool.stamp(KV, block.uses)

    def refs(self, page: int) -> int:
        return self._blocks[page].refs

    # Reclaimer

    def reclaimable(self) -> int:
        return len(self._idle)

    def _next_victim(self) -> int | None:
        leaves = (p for p in self._idle if self._blocks[p].children == 0)
        if self.pool.eviction.in_release_order:
            return next(leaves, None)
        return min(leaves, key=self._idle.__getitem__, default=None)

    def oldest(self) -> Stamp | None:
        page = self._next_victim()
        return None if page is None else self._idle[page]

    def evict_oldest(self) -> int:
        page = self._next_victim()
        if page is None:
            return 0
        del self._idle[page]
        block = self._blocks.pop(page)
        del self._page_of[block.hash]
        if block.parent is not None:
            self._blocks[block.parent].children -= 1
        self.pool.free([page])
        self.stats.evictions += 1
        return 1

    def clear_idle(self) -> int:
        """Evict every idle block (leaves first); pages freed."""
        freed = 0
        while n := self.evict_oldest():
            freed += n
        return freed

    @property
    def num_cached(self) -> int:
        """Cached blocks, held or idle."""
        return len(self._blocks)
