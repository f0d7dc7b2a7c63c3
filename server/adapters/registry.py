"""Adapter names -> immutable refs. Registration reads adapter_config.json only; weights load on first use."""

import itertools
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from server.adapters.adapter_config import CONFIG_FILE, check_files, read_adapter_config
from server.adapters.host_cache import HostCache
from server.adapters.shapes import num_layers
from server.adapters.types import AdapterError, AdapterRef, AdapterWeights

log = logging.getLogger(__name__)
MAX_NAME_LEN = 256


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise AdapterError(f"adapter name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LEN:
        raise AdapterError(f"adapter name {name[:40]!r}... is longer than {MAX_NAME_LEN} characters")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise AdapterError(f"adapter name {name!r} must not contain path separators or be '.'/'..'")
    if not name.isprintable():
        raise AdapterError(f"adapter name {name!r} contains control characters")
    return name


class AdapterRegistry:
    """Thread-safe: the API registers and unregisters while the engine resolves names and loads weights."""

    def __init__(self, base_config, max_rank: int = 64, host_cache: HostCache | None = None):
        if max_rank < 1:
            raise ValueError("max_rank must be positive")
        self.base_config = base_config
        self.max_rank = max_rank
        self.num_layers = num_layers(base_config)
        self.host_cache = host_cache if host_cache is not None else HostCache(base_config)
        self._lock = threading.Lock()
        self._ids = itertools.count()  # never reused, also across unregister/register of one name
        self._by_name: dict[str, AdapterRef] = {}
        self._by_id: dict[int, AdapterRef] = {}

    def _validate(self, name: str, path: str | os.PathLike) -> tuple[str, Path, object]:
        name = check_name(name)
        path = Path(path).expanduser().absolute()
        check_files(name, path)
        return name, path, read_adapter_config(name, path, self.num_layers, self.max_rank)

    def _add(self, name: str, path: Path, spec) -> AdapterRef:
        if name in self._by_name:
            raise AdapterError(f"adapter {name!r} is already registered (from {self._by_name[name].path})")
        ref = AdapterRef(next(self._ids), name, path, spec.rank, spec.alpha, spec.use_rslora,
                         spec.target_modules, spec.layers)
        self._by_name[name] = self._by_id[ref.id] = ref
        return ref

    def register(self, name: str, path: str | os.PathLike) -> AdapterRef:
        validated = self._validate(name, path)
        with self._lock:
            return self._add(*validated)

    def register_dir(self, directory: str | os.PathLike, *, skip_invalid: bool = False) -> list[AdapterRef]:
        """Every subfolder holding adapter_config.json, named by folder, in name order.

        All or nothing unless skip_invalid: one AdapterError lists every bad folder and none registers.
        With skip_invalid the bad ones are logged and left out."""
        directory = Path(directory).expanduser().absolute()
        if not directory.is_dir():
            raise AdapterError(f"adapter directory {directory} does not exist")
        with os.scandir(directory) as it:
            folders = sorted(e.name for e in it if e.is_dir() and os.path.isfile(os.path.join(e.path, CONFIG_FILE)))
        good, errors = [], []
        for folder in folders:
            try:
                good.append(self._validate(folder, directory / folder))
            except AdapterError as e:
                errors.append(e)
        with self._lock:
            errors += [AdapterError(f"adapter {name!r} is already registered") for name, _, _ in good
                       if name in self._by_name]
            if errors and not skip_invalid:
                shown = "; ".join(str(e) for e in errors[:5])
                more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
                raise AdapterError(f"{len(errors)} invalid adapters in {directory}: {shown}{more}")
            for e in errors:
                log.warning("skipping %s", e)
            return [self._add(*v) for v in good if v[0] not in self._by_name]

    def unregister(self, name: str) -> AdapterRef:
        with self._lock:
            ref = self._by_name.pop(name, None)
            if ref is None:
                raise KeyError(f"unknown adapter {name!r}")
            del self._by_id[ref.id]
        self.host_cache.discard(ref.id)
        return ref

    def get(self, name: str) -> AdapterRef:
        with self._lock:
            ref = self._by_name.get(name)
        if ref is None:
            raise KeyError(f"unknown adapter {name!r}")
        return ref

    def by_id(self, ref_id: int) -> AdapterRef:
        with self._lock:
            ref = self._by_id.get(ref_id)
        if ref is None:
            raise KeyError(f"unknown adapter id {ref_id}")
        return ref

    def weights(self, ref: AdapterRef) -> AdapterWeights:
        """The ref's weights from the host cache, read and validated on first use (AdapterError if bad)."""
        return self.host_cache.get_or_load(ref)

    def list(self) -> list[AdapterRef]:
        with self._lock:
            return list(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[AdapterRef]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._by_name)
