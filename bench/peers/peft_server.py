"""A plain transformers + PEFT server: what a user writes first to serve many LoRA adapters of one base.

    python -m bench.peers.peft_server --model DIR --adapter-dir ADAPTERS --port 8301

OpenAI /v1/completions (SSE streaming with usage, or one JSON answer), /v1/models, /health. One worker
thread runs batches: a batch takes the oldest waiting request's adapter and up to --max-batch waiting
requests for that same adapter, because PEFT's `set_adapter` switches the whole model; the batch is
left-padded and decoded by `generate` (greedy, or sampling at the first request's temperature) until its
longest request is done, each row streaming its own tokens and stopping at its own max_tokens or EOS.
Adapters load on first use (`load_adapter`); at most --max-loaded stay, the least recently used is
deleted first. float32: on an AVX2-only CPU torch's bf16 matmuls are several times slower.
"""

import argparse
import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.generation.stopping_criteria import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

DONE = object()  # end-of-stream marker on a request's queue


@dataclass
class Job:
    prompt_ids: list[int]
    adapter: str | None  # None = base model
    max_tokens: int
    temperature: float
    ignore_eos: bool
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    cancelled: bool = False  # the client went away

    def emit(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class RowStreamer(BaseStreamer):
    """generate() hands every step's tokens for the whole batch; each row goes to its own client."""

    def __init__(self, jobs: list[Job], eos: set[int]):
        self.jobs, self.eos, self.prompt_seen = jobs, eos, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call carries the prompt
            self.prompt_seen = True
            return
        for job, tok in zip(self.jobs, value.view(-1).tolist(), strict=True):
            if job.finish is not None:
                continue
            if tok in self.eos and not job.ignore_eos:
                job.finish = "stop"
                job.emit(DONE)
                continue
            job.tokens.append(tok)
            job.emit(tok)
            if len(job.tokens) >= job.max_tokens:
                job.finish = "length"
                job.emit(DONE)

    def end(self) -> None:
        for job in self.jobs:
            if job.finish is None:
                job.finish = "length"
                job.emit(DONE)


class AllRowsDone(StoppingCriteria):
    """Ends generate() once every row has finished or lost its client (otherwise it runs to the longest max)."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = all(j.finish is not None or j.cancelled for j in self.jobs)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


class PeftWorker:
    def __init__(self, model_dir: str, adapters: dict[str, Path], max_batch: int, max_loaded: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.model = None  # the PeftModel, made on the first adapter request
        self.adapters, self.max_batch, self.max_loaded = adapters, max_batch, max_loaded
        self.loaded: OrderedDict[str, None] = OrderedDict()  # LRU order, most recent last
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos = {self.tokenizer.eos_token_id, *([self.base.generation_config.eos_token_id] if isinstance(
            self.base.generation_config.eos_token_id, int) else self.base.generation_config.eos_token_id or [])}
        self.waiting: deque[Job] = deque()
        self.cv = threading.Condition()
        self.adapter_loads = 0
        threading.Thread(target=self.run, daemon=True, name="peft-worker").start()

    def submit(self, job: Job) -> None:
        with self.cv:
            self.waiting.append(job)
            self.cv.notify()

    def next_batch(self) -> list[Job]:
        """The oldest request's adapter, and every waiting request for it, oldest first, up to max_batch."""
        with self.cv:
            while not self.waiting or all(j.cancelled for j in self.waiting):
                self.waiting = deque(j for j in self.waiting if not j.cancelled)
                self.cv.wait(timeout=1.0)
            self.waiting = deque(j for j in self.waiting if not j.cancelled)
            adapter = self.waiting[0].adapter
            batch = [j for j in self.waiting if j.adapter == adapter][: self.max_batch]
            taken = {id(j) for j in batch}
            self.waiting = deque(j for j in self.waiting if id(j) not in taken)
            return batch

    def activate(self, name: str) -> None:
        from peft import PeftModel

        if name in self.loaded:
            self.loaded.move_to_end(name)
        else:
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, self.adapters[name], adapter_name=name).eval()
            else:
                if len(self.loaded) >= self.max_loaded:
                    old, _ = self.loaded.popitem(last=False)
                    self.model.delete_adapter(old)
                self.model.load_adapter(self.adapters[name], adapter_name=name)
            self.loaded[name] = None
            self.adapter_loads += 1
        self.model.set_adapter(name)

    def run(self) -> None:
        while True:
            batch = self.next_batch()
            try:
                self.generate(batch)
            except Exception as e:  # one bad batch fails its own requests only
                for job in batch:
                    if job.finish is None:
                        job.finish = "error"
                        job.emit(e)

    @torch.inference_mode()
    def generate(self, batch: list[Job]) -> None:
        width = max(len(j.prompt_ids) for j in batch)
        ids = torch.tensor([[self.pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in batch])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in batch])
        temp = batch[0].temperature
        kwargs = dict(do_sample=True, temperature=temp) if temp > 0 else dict(do_sample=False)
        if batch[0].adapter is None and self.model is not None:
            ctx, model = self.model.disable_adapter(), self.model
        else:
            if batch[0].adapter is not None:
                self.activate(batch[0].adapter)
            ctx, model = contextlib.nullcontext(), self.model or self.base
        with ctx:
            # EOS does not stop the batch: the streamer ends each row at its own EOS or max_tokens
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(j.max_tokens for j in batch),
                           eos_token_id=None, pad_token_id=self.pad, streamer=RowStreamer(batch, self.eos),
                           stopping_criteria=[AllRowsDone(batch)], top_p=None, top_k=None, **kwargs)


def build_app(worker: PeftWorker, served_name: str):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        names = [served_name, *sorted(worker.adapters)]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "peft-server"} for n in names]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        model = body.get("model")
        if model != served_name and model not in worker.adapters:
            return JSONResponse({"error": {"message": f"unknown model {model!r}", "type": "not_found",
                                           "param": "model", "code": 404}}, status_code=404)
        prompt = body.get("prompt", "")
        ids = prompt if isinstance(prompt, list) else worker.tokenizer(prompt)["input_ids"]
        loop = asyncio.get_running_loop()
        job = Job(ids, None if model == served_name else model, int(body.get("max_tokens") or 16),
                  float(body.get("temperature", 1.0) or 0.0), bool(body.get("ignore_eos", False)),
                  asyncio.Queue(), loop)
        worker.submit(job)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None, usage: dict | None = None) -> str:
            choices = [] if usage else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
            msg = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
            if usage:
                msg["usage"] = usage
            return f"data: {json.dumps(msg)}\n\n"

        def usage() -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": len(job.tokens),
                    "total_tokens": len(ids) + len(job.tokens)}

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            async def events():
                try:
                    while (item := await job.queue.get()) is not DONE:
                        if isinstance(item, Exception):
                            yield f"data: {json.dumps({'error': {'message': str(item), 'type': 'internal_error'}})}\n\n"
                            return
                        yield chunk(worker.tokenizer.decode([item], skip_special_tokens=True), None)
                    yield chunk("", job.finish)
                    if include_usage:
                        yield chunk("", None, usage())
                    yield "data: [DONE]\n\n"
                finally:
                    job.cancelled = job.finish is None

            return StreamingResponse(events(), media_type="text/event-stream")
        while (item := await job.queue.get()) is not DONE:
            if isinstance(item, Exception):
                return JSONResponse({"error": {"message": str(item), "type": "internal_error"}}, status_code=500)
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": worker.tokenizer.decode(job.tokens, skip_special_tokens=True),
                             "logprobs": None, "finish_reason": job.finish}], "usage": usage()}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--served-model-name", default="SmolLM2-135M-Instruct")
    ap.add_argument("--adapter-dir", default=None, help="every subfolder with adapter_config.json, named by folder")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH", help="one more adapter")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8301)
    ap.add_argument("--max-batch", type=int, default=32, help="most requests (one adapter) in a batch")
    ap.add_argument("--max-loaded", type=int, default=128, help="adapters kept loaded (LRU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    adapters = {p.parent.name: p.parent for p in Path(args.adapter_dir).glob("*/adapter_config.json")} \
        if args.adapter_dir else {}
    adapters |= {name: Path(path) for name, _, path in (a.partition("=") for a in args.adapter)}
    worker = PeftWorker(args.model, adapters, args.max_batch, args.max_loaded)
    import uvicorn

    uvicorn.run(build_app(worker, args.served_model_name), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
