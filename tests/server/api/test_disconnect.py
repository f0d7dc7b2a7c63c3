"""Clients that leave mid-stream: their requests are aborted and their KV pages go back to the pool."""

import asyncio

import httpx

from tests.server.api.harness import MAX_TOKENS_CAP, MODEL, wait_until

STREAMS = 20


def kv_pages(server) -> float:
    return server.sample("loraplex_pool_pages", use="kv")


def test_dropped_streams_free_their_pages(idle):
    server = idle
    idle_kv = kv_pages(server)
    gone_before = server.sample("loraplex_requests_total", route="/v1/completions", status="499")
    body = {"model": MODEL, "max_tokens": MAX_TOKENS_CAP, "stream": True, "ignore_eos": True}

    async def main() -> tuple[float, float]:
        started = 0
        all_started = asyncio.Event()
        release = asyncio.Event()

        async def one(client: httpx.AsyncClient, i: int) -> None:
            nonlocal started
            req = {**body, "prompt": f"Story number {i}:"}
            async with client.stream("POST", f"{server.url}/v1/completions", json=req) as r:
                assert r.status_code == 200
                lines = r.aiter_lines()  # held, not abandoned: a dropped line iterator closes the connection
                chunks = 0
                while chunks < 2:
                    chunks += (await anext(lines)).startswith("data: {")
                started += 1
                if started == STREAMS:
                    all_started.set()
                await release.wait()
            # leaving the block closes the connection mid-stream

        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=STREAMS)) as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(STREAMS)]
            await all_started.wait()
            during = await asyncio.to_thread(lambda: (kv_pages(server), server.sample("loraplex_requests_running")))
            release.set()
            await asyncio.gather(*tasks)
        return during

    kv_during, running_during = asyncio.run(main())
    assert running_during == STREAMS
    assert kv_during > idle_kv
    wait_until(lambda: kv_pages(server) == idle_kv, what="KV pages to return to the pool")
    wait_until(lambda: server.sample("loraplex_requests_running") == 0, what="no running requests")
    gone = server.sample("loraplex_requests_total", route="/v1/completions", status="499") - gone_before
    assert gone == STREAMS


def test_dropped_non_streamed_request_is_aborted(idle):
    server = idle
    idle_kv = kv_pages(server)
    body = {"model": MODEL, "prompt": "A long tale:", "max_tokens": MAX_TOKENS_CAP, "ignore_eos": True}

    async def main() -> float:
        async with httpx.AsyncClient(timeout=120) as client:
            task = asyncio.create_task(client.post(f"{server.url}/v1/completions", json=body))
            await asyncio.to_thread(wait_until, lambda: server.sample("loraplex_requests_running") == 1)
            during = await asyncio.to_thread(kv_pages, server)
            task.cancel()  # closes the connection before the answer
            await asyncio.gather(task, return_exceptions=True)
            return during

    assert asyncio.run(main()) > idle_kv
    wait_until(lambda: kv_pages(server) == idle_kv, what="KV pages to return to the pool")
