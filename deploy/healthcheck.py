"""Docker HEALTHCHECK: exit 0 when GET /health on LORAPLEX_PORT answers 200, else 1 (no curl in slim images)."""

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('LORAPLEX_PORT', '8000')}/health"
    try:
        with urllib.request.urlopen(url, timeout=float(os.environ.get("LORAPLEX_HEALTHCHECK_TIMEOUT", "4"))) as r:
            return 0 if r.status == 200 else 1
    except OSError:  # refused, timed out, or HTTPError (503 while starting or draining)
        return 1


if __name__ == "__main__":
    sys.exit(main())
