"""One generated sequence: a counter of computed tokens chasing the token count. No torch here."""

from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum

from server.engine.sampling_params import SamplingParams

NO_ADAPTER = -1  # the adapter id of base-only sequences
LoRAMix = tuple[tuple[int, float], ...]  # (adapter id, weight) pairs: () base, one pair an adapter, k a mixture


@dataclass(frozen=True, slots=True)
class TokenRouting:
    """Arrow per token: at every projection each token mixes top_k of its sequence's adapters (the candidates)."""

    top_k: int
    temperature: float  # of the softmax over the chosen candidates' scores
    # each candidate's mean |cos| on generic text, in the sequence's adapter order: where only some candidates
    # target a projection they compete on |cos| / level against the base at 1 (kernels/arrow_rows.py); None: PEFT
    levels: tuple[float, ...] | None = None


class SeqStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request_id: str
    index: int  # which of the request's n sequences
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float  # monotonic seconds
    lora: LoRAMix = ()
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)  # KV page ids
    status: SeqStatus = SeqStatus.WAITING
    num_preemptions: int = 0
    finish_reason: str | None = None
    first_scheduled: float | None = None  # monotonic seconds of its first scheduled chunk
    grammar: object | None = None  # its place in a structured-output grammar (server/structured), or None
    routing: TokenRouting | None = None  # None: `lora` is applied with its weights; else its adapters route per token
    # prefix caching: the content identity of its LoRA math (server/engine/lora_identity.py; () = base)
    lora_identity: Hashable = ()
    block_hashes: list[int] = field(default_factory=list)  # hash chain of its table's first full computed blocks
    num_cached_tokens: int | None = None  # prompt tokens found cached at its first admission (None: not looked up)

    @property
    def adapter_ids(self) -> tuple[int, ...]:
        return tuple(a for a, _ in self.lora)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def tokens(self, start: int, stop: int) -> list[int]:
        n = len(self.prompt_ids)
        if stop <= n:
            return self.prompt_ids[start:stop]
        if start >= n:
            return self.output_ids[start - n : stop - n]
        return self.prompt_ids[start:] + self.output_ids[: stop - n]
