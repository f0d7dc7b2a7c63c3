"""PEFT adapters (LoRA, DoRA): registry (metadata), validation, formats, host-memory cache of weights."""

from server.adapters.formats import FORMATS, AdapterFormat
from server.adapters.host_cache import HostCache, HostCacheStats
from server.adapters.loader import load_adapter_weights
from server.adapters.registry import AdapterRegistry
from server.adapters.types import BASE_ID, MODULES, AdapterError, AdapterRef, AdapterWeights

__all__ = [
    "BASE_ID", "FORMATS", "MODULES", "AdapterError", "AdapterFormat", "AdapterRef", "AdapterRegistry",
    "AdapterWeights", "HostCache", "HostCacheStats", "load_adapter_weights",
]
