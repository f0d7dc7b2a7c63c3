"""The synchronous engine: requests in, one scheduler step + one forward per call, deltas out."""

import itertools
import logging
import math
import time
from dataclasses import dataclass

import torch

from server.adapters.host_cache import HostCache
from server.adapters.manager import AdapterManager
from server.adapters.registry import AdapterRegistry
from server.config import EngineConfig
from server.engine.faults import Faults
from server.engine.lora_identity import lora_identity
from server.engine.model_runner import ModelRunner
from server.engine.output_processor import OutputProcessor
from server.engine.outputs import SequenceDelta
from server.engine.sampling_params import SamplingParams
from server.engine.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from server.engine.sequence import SeqStatus, Sequence, TokenRouting
from server.memory.adapter_pages import AdapterPages, pack
from server.memory.block_manager import BlockManager, blocks_for
from server.memory.device_pool import DevicePool
from server.memory.eviction import Eviction, EvictionConfig
from server.memory.prefix_cache import PrefixCache
from server.model.llama import LlamaForCausalLM, head_dim
from server.model.loader import Checkpoint, build_model, resolve_checkpoint

log = logging.getLogger(__name__)
MAX_MIXTURE = 8  # adapters one request may mix


class UnknownAdapter(ValueError):
    """The request names an adapter that is not registered (any more)."""


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # None = the base model
    mixture: tuple[tuple[str, float], ...] = ()  # instead of `adapter`: the weighted sum of these adapters' deltas
    grammar: object | None = None  # a compiled structured.Grammar: each sequence gets its own matcher
    # with a mixture: its adapters are candidates that every token routes among (Arrow), its weights unused
    routing: TokenRouting | None = None

    def lora(self) -> tuple[tuple[str, float], ...]:
        """(adapter name, weight) pairs; () = the base model."""
        return self.mixture or (((self.adapter, 1.0),) if self.adapter is not None else ())


def check_routing(routing: TokenRouting, has_candidates: bool) -> None:
    if not has_candidates:
        raise ValueError("per-token routing needs its candidate adapters as a mixture (and no single adapter)")
    if routing.top_k < 1 or not (math.isfinite(routing.temperature) and routing.temperature > 0):
        raise ValueError(f"per-token routing needs top_k >= 1 and a temperature > 0, not {routing}")
    if routing.levels is not None and not all(math.isfinite(v) and v > 0 for v in routing.levels):
        raise ValueError(f"per-token routing levels must be finite and > 0, not {routing.levels}")


def _eos_ids(ckpt: Checkpoint) -> set[int]:
    ids: set[int] = set()
    for src in (ckpt.config.eos_token_id, ckpt.tokenizer.eos_token_id):
        if src is not None:
            ids.update(src if isinstance(src, list) else [src])
    return ids


class LLMEngine:
    def __init__(self, config: EngineConfig, checkpoint: Checkpoint, model: LlamaForCausalLM):
        self.config = config
        self.checkpoint = checkpoint
        self.tokenizer = checkpoint.tokenizer
        self.model_name = checkpoint.name
        mc = checkpoint.config
        self.max_model_len = config.max_model_len or mc.max_position_embeddings
        dtype = getattr(torch, config.dtype)
        n_pages = DevicePool.pages_for_budget(
            config.pool_mb, mc.num_hidden_layers, config.block_size, mc.num_key_value_heads, head_dim(mc), dtype
        )
        self.pool = DevicePool(
            n_pages, mc.num_hidden_layers, config.block_size, mc.num_key_value_heads, head_dim(mc), dtype,
            config.device, Eviction(EvictionConfig(config.eviction)),
        )
        self.registry = AdapterRegistry(
            mc, config.max_lora_rank, HostCache(mc, config.adapter_cache_mb * 2**20, dtype)
        )
        self.adapters = AdapterManager(
            self.registry, AdapterPages(self.pool.book, self.pool.page_elems), self.pool.pages.view(-1),
            mc.num_hidden_layers,
        )
        # after the adapters' pages: the pool's reclaimers, whose idle things it evicts in one LRU order
        self.prefix_cache = PrefixCache(self.pool.book, config.block_size) if config.prefix_caching else None
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_batch_tokens),
            BlockManager(self.pool.book, config.block_size, self.prefix_cache),
            self.adapters,
        )
        self.runner = ModelRunner(model, self.pool, self.adapters, eos_ids=_eos_ids(checkpoint))
        self.outputs = OutputProcessor(self.tokenizer, _eos_ids(checkpoint), self.max_model_len)
        self._seq_ids = itertools.count()
        self._requests: dict[str, list[Sequence]] = {}
        self.last_step: SchedulerOutput | None = None  # what the latest step ran, for stats and tests
        self._built: list[SequenceDelta] = []  # this step's deltas so far: a failing step still hands them out
        self.faults = Faults.from_env()
        if self.faults is not None:
            self._inject_adapter_faults(self.faults)

    @classmethod
    def from_config(cls, config: EngineConfig) -> "LLMEngine":
        t0 = time.perf_counter()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        ckpt = resolve_checkpoint(config.model, config.cache_dir)
        max_len = config.max_model_len or ckpt.config.max_position_embeddings
        model = build_model(ckpt, max_len, getattr(torch, config.dtype), config.device, config.weights)
        engine = cls(config, ckpt, model)
        log.info(
            "engine ready: %s, %s, %d KV pages of %d tokens, %.1fs",
            ckpt.name, config.dtype, engine.pool.book.num_pages, config.block_size, time.perf_counter() - t0,
        )
        return engine

    # requests

    def check_request(self, req: EngineRequest) -> None:
        """Raise ValueError naming what is wrong; nothing changes."""
        n = len(req.prompt_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        if req.request_id in self._requests:
            raise ValueError(f"request id {req.request_id!r} is already running")
        vocab = self.checkpoint.config.vocab_size
        if min(req.prompt_ids) < 0 or max(req.prompt_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        req.params.check_vocab(vocab)
        if n >= self.max_model_len:
            raise ValueError(f"the prompt has {n} tokens; this model's context is {self.max_model_len}")
        if req.routing is not None:
            check_routing(req.routing, bool(req.mixture) and req.adapter is None)
            if req.routing.levels is not None and len(req.routing.levels) != len(req.mixture):
                raise ValueError(f"per-token routing has {len(req.routing.levels)} levels for "
                                 f"{len(req.mixture)} candidates")
        if req.mixture and req.adapter is not None:
            raise ValueError("a request names either one adapter or a mixture, not both")
        if len(req.mixture) > MAX_MIXTURE:
            raise ValueError(f"a mixture has at most {MAX_MIXTURE} adapters, not {len(req.mixture)}")
        if any(not math.isfinite(w) for _, w in req.mixture):
            raise ValueError("mixture weights must be finite numbers")
        names = [name for name, _ in req.lora()]
        if len(set(names)) < len(names):
            raise ValueError("a mixture names each adapter once")
        need = blocks_for(min(n + req.params.max_tokens, self.max_model_len), self.config.block_size)
        for name in names:
            try:
                ref = self.adapters.resolve(name)
            except KeyError:
                raise UnknownAdapter(f"The model `{name}` does not exist.") from None
            # a rescale of summed deltas has no PEFT meaning
            if (len(names) > 1 or req.routing is not None) and ref.format == "dora":
                raise ValueError(f"DoRA adapter {name!r} cannot be part of a mixture")
            need += pack(self.adapters.sizes(ref), self.pool.page_elems)[0]
        if need > self.pool.book.num_pages:
            raise ValueError(f"prompt + max_tokens (+ adapter) need {need} pool pages; the pool has "
                             f"{self.pool.book.num_pages}")

    def add_request(self, req: EngineRequest) -> None:
        self.check_request(req)
        now = time.monotonic()
        lora, refs = [], []
        for name, weight in req.lora():
            ref = self.adapters.resolve(name)
            self.adapters.hold(ref, req.params.n)
            lora.append((ref.id, float(weight)))
            refs.append((ref, float(weight)))
        identity = lora_identity(refs)
        if req.routing is not None:  # the same candidates mixed per token make other KV than as a fixed mixture
            identity = ("arrow-token", req.routing.top_k, req.routing.temperature, req.routing.levels, identity)
        seqs = []
        for i in range(req.params.n):
            seq = Sequence(next(self._seq_ids), req.request_id, i, list(req.prompt_ids), req.params, now, tuple(lora),
                           lora_identity=identity, routing=req.routing)
            if req.params.seed is not None:
                self.runner.generators[seq.seq_id] = torch.Generator().manual_seed(req.params.seed + i)
            seq.grammar = req.grammar.matcher() if req.grammar is not None else None
            self.outputs.add(seq)
            self.scheduler.add(seq)
            seqs.append(seq)
        self._requests[req.request_id] = seqs

    def abort(self, request_id: str) -> list[SequenceDelta]:
        deltas = []
        for seq in self._requests.get(request_id, []):
            if seq.status is not SeqStatus.FINISHED:  # finished ones were forgotten as they finished
                self.scheduler.finish(seq, "abort")
                deltas.append(self.outputs.delta(seq, "abort"))
                self._forget(seq)
        self._requests.pop(request_id, None)
        return deltas

    def _forget(self, seq: Sequence) -> None:
        self.outputs.drop(seq)
        self.runner.generators.pop(seq.seq_id, None)
        self.runner.partial_prompt_logprobs.pop(seq.seq_id, None)
        for aid in seq.adapter_ids:
            self.adapters.unhold(aid)

    def prompt_features(
        self, prompt_ids: list[int], keys: set[tuple[int, str]]
    ) -> dict[tuple[int, str], torch.Tensor]:
        """The base model's inputs (T, in) to the (layer, module) projections in keys over a prompt.

        A side prefill between steps (for routers that read hidden states): its KV pages come from the
        pool like any sequence's and go back before this returns, its full blocks into the prefix cache
        under the base model's identity (a request the router sends to the base then starts after them).
        The pass itself cannot start from cached KV: it needs every position's projection inputs, which
        KV does not hold. RuntimeError when the pool has no room.
        """
        n = len(prompt_ids)
        assert 0 < n <= self.config.max_batch_tokens, n
        blocks, table = self.scheduler.blocks, []
        if not blocks.can_grow(table, n):
            raise RuntimeError("no free pool pages for a routing pass")
        blocks.grow(table, n)
        seq = Sequence(-1, "", 0, list(prompt_ids), SamplingParams(max_tokens=1), time.monotonic(), block_table=table)
        try:
            features = self.runner.features(SchedulerOutput(prefills=[ScheduledChunk(seq, 0, n)]), keys)
            if self.prefix_cache is not None:
                seq.num_computed = n
                self.scheduler.register_computed_blocks(seq)  # may swap in an equal cached page: same table
            return features
        finally:
            blocks.release(table)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # the loop

    def step(self) -> list[SequenceDelta]:
        self._built, self.last_step = [], None
        out = self.scheduler.schedule()
        self._fault("schedule")
        self.last_step = out
        for seq, msg in out.failed:
            self._built.append(self.outputs.delta(seq, "error", msg, "adapter_load_failed"))
            self._finish(seq)
        if not out.chunks:
            return self._take()
        now = time.monotonic()
        for chunk in out.chunks:
            if chunk.seq.first_scheduled is None:
                chunk.seq.first_scheduled = now
        self._fault("step")
        sampled = self.runner.run(out)
        self.scheduler.advance(out)
        for s in sampled:
            seq = s.chunk.seq
            self._fault("output")
            reason = self.outputs.append(seq, s.token_id, s.logprob, s.prompt_logprobs)
            if seq.grammar is not None:  # a complete grammar ends the sequence
                reason = seq.grammar.advance(s.token_id) or reason
            if reason:
                self.scheduler.finish(seq, reason)
            self._built.append(self.outputs.delta(seq, reason))
            if reason:
                self._finish(seq)
        return self._take()

    def fail_step(self, error: BaseException) -> list[SequenceDelta]:
        """The last step raised: hand out what it built, end the sequences it touched with an internal
        error; everyone else goes on. When schedule() itself raised, its placements are unknown, so every
        running sequence is failed (its pages may be half grown)."""
        self._fault("recover")
        deltas = self._take()
        touched = [c.seq for c in self.last_step.chunks] if self.last_step else list(self.scheduler.running)
        # finished by the scheduler but never handed out (the step raised in between)
        touched += [s for seqs in self._requests.values() for s in seqs
                    if s.status is SeqStatus.FINISHED and self.outputs.tracks(s)]
        for seq in touched:
            if not self.outputs.tracks(seq):
                continue
            if seq.status is not SeqStatus.FINISHED:
                self.scheduler.finish(seq, "error")
            deltas.append(self.outputs.delta(seq, "error", f"internal error: {error!r}", "internal_error"))
            self._finish(seq)
        self.last_step = None
        return deltas

    def _take(self) -> list[SequenceDelta]:
        deltas, self._built = self._built, []
        return deltas

    def _fault(self, site: str) -> None:
        if self.faults is not None:
            self.faults.maybe(site)

    def _inject_adapter_faults(self, faults: Faults) -> None:
        cache = self.registry.host_cache
        load = cache._load

        def faulty(*args, **kwargs):
            faults.maybe("adapter_load")
            return load(*args, **kwargs)

        cache._load = faulty

    def _finish(self, seq: Sequence) -> None:
        self._forget(seq)
        seqs = self._requests.get(seq.request_id, [])
        if all(s.status is SeqStatus.FINISHED for s in seqs):
            self._requests.pop(seq.request_id, None)

    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Offline: run prompts to completion together; output ids of sequence 0 of each, in order."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"offline-{next(self._seq_ids)}" for _ in prompts]
        results: dict[str, list[int]] = {i: [] for i in ids}
        for rid, prompt, p in zip(ids, prompts, params, strict=True):
            self.add_request(EngineRequest(rid, prompt, p))
        while self.has_work():
            for d in self.step():
                if d.index == 0:
                    results[d.request_id] += d.token_ids
        return [results[i] for i in ids]
