"""The content identity of a sequence's LoRA math, which keys its cached KV blocks. No torch here.

An adapter is its digest (sha256 of its weights file and the config fields that change its math,
computed at registration), so a name reloaded with other weights never matches its old KV and two
names for the same weights share it. A mixture is its sorted (digest, weight) pairs; the base model
is (). Weights are floats as the request gave them: 0.5 and 0.50 are one identity, 0.5 and 0.5000001
are two (a miss, never wrong KV).
"""

from collections.abc import Iterable

from server.adapters.types import AdapterRef

LoRAIdentity = tuple[tuple[str, float], ...]
BASE_IDENTITY: LoRAIdentity = ()


def adapter_identity(ref: AdapterRef) -> str:
    # ids are never reused, so an adapter registered without a digest still never aliases another
    return ref.digest or f"id:{ref.id}"


def lora_identity(lora: Iterable[tuple[AdapterRef, float]]) -> LoRAIdentity:
    return tuple(sorted((adapter_identity(ref), float(w)) for ref, w in lora))
