"""Iteration-level continuous batching with chunked prefill and recompute preemption. No torch here.

Every step: running sequences first (oldest first: decodes and unfinished prefill chunks), then
waiting ones while seats, tokens and pages last. When a running sequence needs a page and none is
free, the newest running sequence is preempted: its pages are freed and it goes back to the front
of the queue to be recomputed later. Requests are never dropped or duplicated.

With a prefix cache (server/memory/prefix_cache.py) a sequence joining the batch first looks up
its tokens under its LoRA identity: it starts with num_computed at the end of the longest cached
chain and a block table whose first pages are those shared blocks, so only new pages and uncomputed
tokens count against the step's budget. Full blocks are registered as soon as they are computed
(advance), so sequences side by side share them; a newcomer whose next block is the one a sequence
admitted in the same step is about to compute waits one step and starts after it. Sequences that
want prompt logprobs skip the look-up: they need every prompt position's logits.
"""

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from server.engine.sequence import SeqStatus, Sequence
from server.memory.block_manager import BlockManager, blocks_for
from server.memory.prefix_cache import block_hash


class AdapterAdmission(Protocol):
    """Pins an adapter in the pool for a sequence that joins the batch."""

    def acquire(self, adapter_id: int, lazy: tuple[str, ...] = ()) -> bool:
        """True: resident and pinned; False: no room now. ValueError: it can never load.

        lazy: pool factors the sequence's steps read that are written on first need (per-token
        routing's prototypes)."""
        ...

    def release(self, adapter_id: int) -> None: ...


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_batch_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_batch_tokens < 1:
            raise ValueError("max_num_seqs and max_batch_tokens must be positive")


@dataclass(slots=True)
class ScheduledChunk:
    seq: Sequence
    start: int  # first position computed this step (== seq.num_computed when scheduled)
    num_tokens: int  # tokens computed this step

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence, so its last token's logits are sampled."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    prefills: list[ScheduledChunk] = field(default_factory=list)  # chunks of more than one token
    decodes: list[ScheduledChunk] = field(default_factory=list)  # one token each
    preempted: list[Sequence] = field(default_factory=list)  # freed this step, back in the queue
    failed: list[tuple[Sequence, str]] = field(default_factory=list)  # finished with an error (adapter load)

    @property
    def chunks(self) -> list[ScheduledChunk]:
        return self.prefills + self.decodes

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.prefills) + len(self.decodes)


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager, adapters: AdapterAdmission | None = None):
        self.config = config
        self.blocks = blocks
        self.adapters = adapters
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_batch_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self.blocks.can_grow(seq.block_table, seq.num_computed + n):
                victim = self.running[-1]  # newest; never one already scheduled (those sit before i)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                self._place(out, seq, n)
                budget -= n
                i += 1
        if out.preempted:  # no room for newcomers this step
            return out
        computing: set[int] = set()  # next-block hashes that sequences admitted this step are computing
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            try:
                if not self._acquire_adapter(seq):
                    break
            except ValueError as e:  # this adapter cannot load: fail its request only
                self.finish(seq, "error")
                out.failed.append((seq, str(e)))
                continue
            hit = self._lookup(seq)  # after the adapter: pinning it may have evicted cached blocks
            computed = len(hit) * self.blocks.block_size
            n = min(seq.num_tokens - computed, budget)
            following = self._next_block(seq, hit)
            # a newcomer that would compute the very block one admitted this step computes waits a step and
            # then starts after it: requests with one prefix arriving together prefill it once
            if following in computing or not self._room_for(hit, computed + n):
                self._release_adapter(seq)
                break
            if following is not None:
                computing.add(following)
            self.waiting.popleft()
            self._start_from(seq, hit)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            self._place(out, seq, n)
            budget -= n
        return out

    def _lookup(self, seq: Sequence) -> list[tuple[int, int]]:
        """The cached chain this sequence may start from: [(page, block hash)]."""
        cache = self.blocks.prefix_cache
        if cache is None or getattr(seq.params, "prompt_logprobs", None) is not None:
            return []
        assert not seq.block_table and seq.num_computed == 0, "a waiting sequence holds no pages"
        bs = self.blocks.block_size
        max_blocks = (seq.num_tokens - 1) // bs  # leave at least one token to compute: its logits are sampled
        return cache.match(seq.tokens(0, max_blocks * bs), seq.lora_identity, max_blocks)

    def _next_block(self, seq: Sequence, hit: list[tuple[int, int]]) -> int | None:
        """Hash of the full block seq would compute next after its cached chain (None: none, or no look-up)."""
        cache, bs = self.blocks.prefix_cache, self.blocks.block_size
        start = len(hit) * bs
        if cache is None or getattr(seq.params, "prompt_logprobs", None) is not None or start + bs >= seq.num_tokens:
            return None
        return block_hash(hit[-1][1] if hit else None, seq.tokens(start, start + bs), seq.lora_identity)

    def _room_for(self, hit: list[tuple[int, int]], num_tokens: int) -> bool:
        """Pages for num_tokens beyond the hit pages, not counting hit pages that are idle (taking them)."""
        pages = [p for p, _ in hit]
        new = blocks_for(num_tokens, self.blocks.block_size) - len(pages)
        taken = self.blocks.prefix_cache.num_idle(pages) if pages else 0
        return new <= self.blocks.pool.num_available() - taken

    def _start_from(self, seq: Sequence, hit: list[tuple[int, int]]) -> None:
        cache = self.blocks.prefix_cache
        looked_up = cache is not None and getattr(seq.params, "prompt_logprobs", None) is None
        if looked_up and seq.num_cached_tokens is None:  # its first admission: what the request reports
            seq.num_cached_tokens = min(len(hit) * self.blocks.block_size, len(seq.prompt_ids))
            cache.record_query(len(seq.prompt_ids), seq.num_cached_tokens)
        if not hit:
            return
        pages = [p for p, _ in hit]
        self.blocks.prefix_cache.take(pages)
        seq.block_table = pages
        seq.block_hashes = [h for _, h in hit]
        seq.num_computed = len(hit) * self.blocks.block_size

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Cache seq's full blocks computed since the last call (its table may now hold shared pages)."""
        cache, bs = self.blocks.prefix_cache, self.blocks.block_size
        for i in range(len(seq.block_hashes), seq.num_computed // bs):
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            got = cache.register(seq.block_table[i], parent, seq.tokens(i * bs, (i + 1) * bs), seq.lora_identity)
            if got is None:  # a hash collision: this block and the rest stay private
                return
            seq.block_hashes.append(got[0])
            seq.block_table[i] = got[1]

    def _place(self, out: SchedulerOutput, seq: Sequence, n: int) -> None:
        self.blocks.grow(seq.block_table, seq.num_computed + n)
        chunk = ScheduledChunk(seq, seq.num_computed, n)
        (out.decodes if n == 1 else out.prefills).append(chunk)

    def _acquire_adapter(self, seq: Sequence) -> bool:
        """Pins every adapter of the sequence, or none of them."""
        if self.adapters is None:
            return True
        got: list[int] = []
        lazy = ("proto",) if seq.routing is not None else ()
        try:
            for aid in seq.adapter_ids:
                if not self.adapters.acquire(aid, lazy):
                    break
                got.append(aid)
        finally:
            if len(got) < len(seq.adapter_ids):
                for aid in got:
                    self.adapters.release(aid)
        return len(got) == len(seq.adapter_ids)

    def _release_adapter(self, seq: Sequence) -> None:
        if self.adapters is not None:
            for aid in seq.adapter_ids:
                self.adapters.release(aid)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release_adapter(seq)
        self.blocks.release(seq.block_table)
        seq.block_hashes.clear()
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)

    def advance(self, out: SchedulerOutput) -> None:
        """The step ran: count its tokens as computed."""
        for chunk in out.chunks:
            chunk.seq.num_computed = chunk.start + chunk.num_tokens
            if self.blocks.prefix_cache is not None:
                self.register_computed_blocks(chunk.seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Leave the batch (finished or aborted); its pages go back to the pool at once."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
            self._release_adapter(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        self.blocks.release(seq.block_table)
        seq.block_hashes.clear()
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
