"""Adapter names -> immutable refs. Registration reads and checks the whole folder; weights load on first use.

A registration either succeeds or leaves nothing behind, and refuses bad content only with
AdapterError: whatever a folder holds, the caller gets a message, never another exception.
"""

import itertools
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from server.adapters.adapter_config import CONFIG_FILE
from server.adapters.folder import AdapterContents, read_folder
from server.adapters.host_cache import HostCache
from server.adapters.types import AdapterError, AdapterRef, AdapterWeights

log = logging.getLogger(__name__)
MAX_NAME_LEN = 256
SCAN_THREADS = min(8, os.cpu_count() or 1)  # reading and hashing release the GIL: folders scan in parallel


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


class _Checked(NamedTuple):
    """A folder that passed every check, not registered yet."""

    name: str
    path: Path
    root: Path | None
    contents: AdapterContents


class AdapterRegistry:
    """Thread-safe: the API registers and unregisters while the engine resolves names and loads weights."""

    def __init__(self, base_config, max_rank: int = 64, host_cache: HostCache | None = None):
        if max_rank < 1:
            raise ValueError("max_rank must be positive")
        self.base_config = base_config
        self.max_rank = max_rank
        self.host_cache = host_cache if host_cache is not None else HostCache(base_config)
        self._lock = threading.Lock()
        self._ids = itertools.count()  # never reused, also across unregister/register of one name
        self._by_name: dict[str, AdapterRef] = {}
        self._by_id: dict[int, AdapterRef] = {}

    def _validate(self, name: str, path: str | os.PathLike, root: str | os.PathLike | None) -> _Checked:
        name = check_name(name)
        try:
            path = Path(path).expanduser().absolute()
            root = Path(root).expanduser().absolute() if root is not None else None
            contents = read_folder(name, path, root, self.base_config, self.max_rank, self.host_cache.dtype)
        except AdapterError:
            raise
        except Exception as e:  # a folder's content must never take the caller down with something else
            raise AdapterError(f"adapter {name!r}: cannot read {path}: {type(e).__name__}: {e}") from e
        return _Checked(name, path, root, contents)

    def _add(self, checked: _Checked) -> AdapterRef:
        name, spec, meta = checked.name, checked.contents.spec, checked.contents.metadata
        if name in self._by_name:
            raise AdapterError(f"adapter {name!r} is already registered (from {self._by_name[name].path})")
        ref = AdapterRef(next(self._ids), name, checked.path, spec.rank, spec.alpha, spec.use_rslora,
                         spec.target_modules, spec.layers, checked.contents.digest, meta.examples, meta.description,
                         checked.root, spec.format)
        self._by_name[name] = self._by_id[ref.id] = ref
        return ref

    def register(self, name: str, path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> AdapterRef:
        """AdapterError for a bad name or folder. With root, the folder and every file in it must lie under
        root (symlinks resolved), now and whenever the weights are read again."""
        checked = self._validate(name, path, root)
        with self._lock:
            return self._add(checked)

    def register_dir(self, directory: str | os.PathLike, *, skip_invalid: bool = False,
                     root: str | os.PathLike | None = None) -> list[AdapterRef]:
        """Every subfolder holding adapter_config.json, named by folder, in name order.

        All or nothing unless skip_invalid: one AdapterError lists every bad folder and none registers.
        With skip_invalid the bad ones are logged and left out, whatever went wrong reading them."""
        directory = Path(directory).expanduser().absolute()
        if not directory.is_dir():
            raise AdapterError(f"adapter directory {directory} does not exist")
        try:
            with os.scandir(directory) as it:
                folders = sorted(e.name for e in it if e.is_dir() and os.path.isfile(os.path.join(e.path, CONFIG_FILE)))
        except OSError as e:
            raise AdapterError(f"cannot list adapter directory {directory}: {e.strerror or e}") from None

        def validate(folder: str) -> _Checked | Exception:
            try:
                return self._validate(folder, directory / folder, root)
            except Exception as e:
                return e

        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            results = list(pool.map(validate, folders))
        good = [r for r in results if isinstance(r, _Checked)]
        errors = [r for r in results if not isinstance(r, _Checked)]
        with self._lock:
            errors += [AdapterError(f"adapter {r.name!r} is already registered")
                       for r in good if r.name in self._by_name]
            if errors and not skip_invalid:
                shown = "; ".join(str(e) for e in errors[:5])
                more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
                raise AdapterError(f"{len(errors)} invalid adapters in {directory}: {shown}{more}")
            for e in errors:
                log.warning("skipping %s", e)
            return [self._add(r) for r in good if r.name not in self._by_name]

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
