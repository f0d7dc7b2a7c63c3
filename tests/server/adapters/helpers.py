"""Edits that turn a valid adapter folder into a broken one."""

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from server.adapters.adapter_config import CONFIG_FILE, WEIGHTS_FILE


def patch_config(path: Path, **fields) -> None:
    """Overwrite fields of adapter_config.json (a value of ... deletes the field)."""
    raw = json.loads((path / CONFIG_FILE).read_text())
    for k, v in fields.items():
        if v is ...:
            raw.pop(k, None)
        else:
            raw[k] = v
    (path / CONFIG_FILE).write_text(json.dumps(raw))


def patch_tensors(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(path / WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, path / WEIGHTS_FILE)
