"""What registration reads from an adapter folder, all of it checked before the adapter gets a name."""

from dataclasses import dataclass
from pathlib import Path

import torch

from server.adapters.adapter_config import (
    CONFIG_FILE,
    PICKLE_FILE,
    WEIGHTS_FILE,
    AdapterSpec,
    load_config_json,
    parse_adapter_config,
)
from server.adapters.files import MAX_JSON_BYTES, AdapterDir
from server.adapters.loader import check_weights, content_digest, weights_limit
from server.adapters.metadata import METADATA_FILE, AdapterMetadata, parse_metadata
from server.adapters.shapes import num_layers
from server.adapters.types import AdapterError


@dataclass(frozen=True, slots=True)
class AdapterContents:
    spec: AdapterSpec
    metadata: AdapterMetadata
    digest: str  # see loader.content_digest


def read_folder(name: str, path: Path, root: Path | None, base_config, max_rank: int,
                dtype: torch.dtype) -> AdapterContents:
    """Config, loraplex.json and weights, read once each; the weights are checked in dtype (the host cache's)."""

    def fail(problem: str) -> AdapterError:
        return AdapterError(f"adapter {name!r}: {problem}")

    with AdapterDir(name, path, root) as folder:
        config = folder.read(CONFIG_FILE, MAX_JSON_BYTES)
        if config is None:
            raise fail(f"missing {CONFIG_FILE} in {path}")
        if not folder.exists(WEIGHTS_FILE):
            if folder.exists(PICKLE_FILE):  # never unpickled: it could run code
                raise fail(f"only pickle weights ({PICKLE_FILE}) in {path}; convert them to {WEIGHTS_FILE}")
            raise fail(f"missing {WEIGHTS_FILE} in {path}")
        spec = parse_adapter_config(name, load_config_json(name, config), num_layers(base_config), max_rank)
        metadata = parse_metadata(name, folder.read(METADATA_FILE, MAX_JSON_BYTES))
        data = folder.read(WEIGHTS_FILE, weights_limit(spec, base_config))
    if data is None:
        raise fail(f"missing {WEIGHTS_FILE} in {path}")
    check_weights(name, spec, data, base_config, dtype)  # refused now rather than by its first request
    return AdapterContents(spec, metadata, content_digest(spec, data))
