"""Where loraplex keeps what it builds once per host: converted weights, compiled kernels.

Here rather than in server/config.py so that kernels never import server; server/config.py reuses it.
"""

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """LORAPLEX_CACHE_DIR, else $XDG_CACHE_HOME/loraplex, else ~/.cache/loraplex."""
    root = os.environ.get("LORAPLEX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "loraplex"
    )
    return Path(root)
