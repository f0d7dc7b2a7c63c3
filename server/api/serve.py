"""uvicorn with a drain: the first SIGTERM/SIGINT stops admitting (503) and waits for in-flight
requests up to the drain timeout, then uvicorn shuts down and the process exits 0. A second signal
stops at once."""

import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from server.api.context import ServerContext
from server.api.state import Phase

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ctx: ServerContext):
        super().__init__(config)
        self.ctx = ctx

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # never recorded in _captured_signals: uvicorn would re-raise it at exit and the status would not be 0
        state = self.ctx.state
        if state.phase is Phase.DRAINING or self.should_exit:
            log.warning("second %s: stopping now", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
            return
        timeout = self.ctx.settings.drain_timeout
        name = signal.Signals(sig).name
        log.info("%s: draining %d in-flight requests (at most %.0fs)", name, state.in_flight, timeout)
        state.begin_drain(timeout)

    async def on_tick(self, counter: int) -> bool:
        if self.ctx.state.drained():
            if self.ctx.state.in_flight:
                log.warning("drain timeout: %d requests still in flight are cut off", self.ctx.state.in_flight)
            self.should_exit = True
        return await super().on_tick(counter)


def serve(app: FastAPI, log_level: str) -> None:
    ctx: ServerContext = app.state.loraplex
    s = ctx.settings
    config = uvicorn.Config(
        app, host=s.host, port=s.port, log_level=log_level, timeout_graceful_shutdown=1, lifespan="on",
    )
    DrainingServer(config, ctx).run()
