"""Which adapters accepted requests still need: refs that outlive an unregister, and their users."""

from server.adapters.types import AdapterRef


class AdapterHolds:
    """Counts unfinished sequences per adapter id; plain bookkeeping, no pool and no torch."""

    def __init__(self):
        self._refs: dict[int, AdapterRef] = {}  # adapters of accepted requests (outlive an unregister)
        self._users: dict[int, int] = {}  # adapter id -> unfinished sequences

    def hold(self, ref: AdapterRef, n: int = 1) -> None:
        self._refs[ref.id] = ref
        self._users[ref.id] = self._users.get(ref.id, 0) + n

    def unhold(self, adapter_id: int) -> bool:
        """One user fewer; True when that was the last."""
        self._users[adapter_id] -= 1
        if self._users[adapter_id]:
            return False
        del self._users[adapter_id]
        return True

    def in_use(self, adapter_id: int) -> bool:
        return adapter_id in self._users

    def __contains__(self, adapter_id: int) -> bool:
        """Whether the ref is still kept (held now, or resident since)."""
        return adapter_id in self._refs

    def ref(self, adapter_id: int) -> AdapterRef:
        return self._refs[adapter_id]

    def forget(self, adapter_id: int) -> None:
        self._refs.pop(adapter_id, None)
