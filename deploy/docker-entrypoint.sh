#!/bin/sh
# Container entry point: `loraplex serve`, configured by LORAPLEX_* env alone (the image sets
# LORAPLEX_HOST=0.0.0.0, LORAPLEX_ADAPTER_DIR=/adapters, LORAPLEX_CACHE_DIR=/cache, ...).
# Extra arguments that start with "-" are passed to `loraplex serve`; anything else runs as a
# command (e.g. `docker run -it IMAGE sh`). exec: the server is PID 1, so SIGTERM starts its drain.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi
exec "${LORAPLEX_BIN:-loraplex}" serve "$@"
