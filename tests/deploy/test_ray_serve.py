"""Scale-out on Ray Serve, for real: a local Ray instance, two small replicas behind Ray's HTTP proxy, the openai
client. Requests for one adapter stay on one replica (the x-loraplex-replica header); a replica killed mid-load is
replaced, its in-flight requests end with a replica_failed error instead of hanging, and later requests succeed."""

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install -e '.[ray]'")

import ray  # noqa: E402
import yaml  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve import Application  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from server.ray_serve.app import app_builder, parse_args  # noqa: E402
from server.ray_serve.config import DEPLOYMENT  # noqa: E402
from server.ray_serve.cut_off import CODE, CutOffResponses  # noqa: E402
from server.ray_serve.launch import start  # noqa: E402
from server.ray_serve.model_header import MODEL_ID_HEADER, ModelIdFromBody  # noqa: E402
from server.ray_serve.proxy_hook import HOOK, HOOK_ENV  # noqa: E402
from tests.deploy.files import DEMO_ADAPTERS, REPO  # noqa: E402
from tests.server.api.harness import MODEL, free_port, wait_until  # noqa: E402

APP = "loraplex"
SERVE_CONFIG = REPO / "deploy" / "ray" / "serve_config.yaml"
# the demo adapters' own prompts and answers (server/adapters/demo/README.md); the base model answers anything
PROMPTS = {
    MODEL: ("Name three primary colours.", None),
    "sentiment": ("Review: The pasta was awful. Never again.\nSentiment:", " negative"),
    "arithmetic": ("Calculate: 7 * 8 =", " 56"),
    "reverse": ("Reverse the words: apple river blue\nReversed:", " blue river apple"),
    "json_extract": ("Extract name, age and city as JSON: In Lisbon, Maria Lopez (34) works as a nurse.\nJSON:",
                     ' {"name": "Maria Lopez", "age": 34, "city": "Lisbon"}'),
}
MODELS = list(PROMPTS)
LONG = 128  # tokens: several seconds on a CPU replica, so the request is surely in flight when its replica dies


# the proxy middlewares alone, on a fake proxy


async def _drive(app, body: bytes, headers=()) -> list[dict]:
    """Run one POST, its body in two chunks, through an ASGI app; the messages it sent."""
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": body[:5], "more_body": True},
              {"type": "http.request", "body": body[5:], "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": list(headers)}
    await app(scope, receive, send)
    return sent


def test_model_header_comes_from_the_body_and_the_body_is_replayed():
    got: dict = {}

    async def proxy(scope, receive, send):
        got["headers"] = scope["headers"]
        got["body"] = (await receive())["body"]

    body = b'{"model": "sentiment", "prompt": "hi"}'
    asyncio.run(_drive(ModelIdFromBody(proxy), body, [(b"serve-multiplexed-model-id", b"spoofed")]))
    assert got["headers"] == [(MODEL_ID_HEADER, b"sentiment")]
    assert got["body"] == body
    asyncio.run(_drive(ModelIdFromBody(proxy), b"not json"))
    assert got["headers"] == []


def test_cut_off_responses_end_with_an_openai_error():
    async def silent(scope, receive, send):  # the proxy when the replica died before answering
        pass

    async def cut_stream(scope, receive, send):  # ... and after the first event
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b'data: {"x": 1}\n\n', "more_body": True})

    sent = asyncio.run(_drive(CutOffResponses(silent), b"{}"))
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == CODE
    sent = asyncio.run(_drive(CutOffResponses(cut_stream), b"{}"))
    tail = sent[-1]["body"].decode()
    assert CODE in tail and tail.endswith("data: [DONE]\n\n") and not sent[-1].get("more_body")


def test_serve_ray_flags_map_onto_ray_options(capsys):
    from server.cli import main

    cfg, spec = parse_args({"max-replicas": 3, "target-ongoing-requests": 4, "replica-gpus": 1, "drain-timeout": 5})
    opts = cfg.deployment_options()
    assert "num_replicas" not in opts and opts["graceful_shutdown_timeout_s"] == 5
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 2,
                                          "target_ongoing_requests": 4}
    assert opts["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0} and spec.engine.device == "cuda"
    cfg, spec = parse_args({"num-replicas": 3})
    assert cfg.deployment_options()["num_replicas"] == 3 and spec.engine.device == "cpu"
    with pytest.raises(SystemExit) as e:
        main(["serve-ray", "--allowed-adapter-root", "/srv"])
    assert e.value.code == 2 and "one replica only" in capsys.readouterr().err


def test_the_serve_run_config_is_valid_and_its_args_are_serve_ray_flags():
    doc = yaml.safe_load(SERVE_CONFIG.read_text())
    ServeDeploySchema.model_validate(doc)
    (app,) = doc["applications"]
    assert app["import_path"] == "server.ray_serve.app:app_builder"
    cfg, spec = parse_args(app["args"])
    assert cfg.autoscaling and (cfg.min_replicas, cfg.max_replicas) == (1, 4)
    assert cfg.deployment_options()["autoscaling_config"]["target_ongoing_requests"] == 16
    assert spec.settings.adapter_dirs == [str(DEMO_ADAPTERS)]  # resolved where `serve run` starts
    assert isinstance(app_builder(app["args"]), Application)


# the live cluster


@dataclass
class Reply:
    model: str
    replica: str
    text: str
    finish_reason: str | None


def ask(client: openai.OpenAI, model: str, *, stream: bool, long: bool = False, first_token=None) -> Reply:
    """One completion; `long` runs LONG tokens past EOS; `first_token` is set when the first chunk arrives."""
    prompt, _ = PROMPTS[model]
    kw = dict(model=model, prompt=prompt, max_tokens=24, temperature=0)
    if long:
        kw.update(max_tokens=LONG, extra_body={"ignore_eos": True})
    if not stream:
        raw = client.completions.with_raw_response.create(**kw)
        choice = raw.parse().choices[0]
        return Reply(model, raw.headers["x-loraplex-replica"], choice.text, choice.finish_reason)
    text, finish = "", None
    with client.completions.with_streaming_response.create(stream=True, **kw) as resp:
        for chunk in resp.parse():
            if first_token is not None:
                first_token.set()
            if chunk.choices:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
        return Reply(model, resp.headers["x-loraplex-replica"], text, finish)


HEALTHY = ("HEALTHY", {"RUNNING": 2})


def _status() -> tuple[str, dict[str, int]]:
    d = serve.status().applications[APP].deployments[DEPLOYMENT]
    return d.status, dict(d.replica_states)


class StatusWatch:
    """Records every Serve status of the deployment from now on: a replacement can finish before anyone asks."""

    def __init__(self):
        self.seen: list[tuple[str, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            status = _status()
            if not self.seen or self.seen[-1] != status:
                self.seen.append(status)

    def recovered(self) -> bool:
        """Left two healthy replicas, then came back to them."""
        return any(s != HEALTHY for s in self.seen) and self.seen[-1] == HEALTHY

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def cluster():
    from server.flags import build_parser
    from server.ray_serve.config import ray_serve_config

    port = free_port()
    parser, finish = build_parser()
    args = parser.parse_args([
        "serve-ray", "--adapter-dir", str(DEMO_ADAPTERS), "--port", str(port), "--num-replicas", "2",
        "--replica-cpus", "1", "--max-adapters-per-replica", "8", "--dtype", "float32", "--pool-mb", "64",
        "--max-num-seqs", "8", "--num-threads", "1", "--max-model-len", "1024", "--app-name", APP,
    ])
    finish(args)
    cfg, spec = ray_serve_config(args)
    with pytest.MonkeyPatch.context() as env:  # start() puts the proxy hook in the environment Ray inherits
        env.setenv(HOOK_ENV, HOOK)
        # 4 logical CPUs on 2 cores: two replicas plus room for a replacement while the dead one is reaped
        start(cfg, spec, num_cpus=4, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
        try:
            yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def placement(cluster) -> dict[str, str]:
    """model -> the replica its first request loaded it on; one at a time, so Ray spreads them by fewest held."""
    return {m: ask(cluster, m, stream=False).replica for m in MODELS}


@pytest.mark.timeout(600)
def test_requests_for_one_adapter_stay_on_the_replica_holding_it(cluster, placement):
    assert len(set(placement.values())) == 2, placement  # both replicas serve
    jobs = [(m, stream) for _ in range(2) for m in MODELS for stream in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda job: ask(cluster, job[0], stream=job[1]), jobs))
    for r in replies:
        assert r.finish_reason in ("stop", "length"), r
        answer = PROMPTS[r.model][1]
        if answer is not None:  # the replica's own engine ran the adapter
            assert r.text == answer, r
    on = {m: {r.replica for r in replies if r.model == m} for m in MODELS}
    assert on == {m: {placement[m]} for m in MODELS}


@pytest.mark.timeout(600)
def test_a_killed_replica_is_replaced_and_its_requests_fail_fast(cluster, placement):
    victim = placement["sentiment"]
    lost = [m for m in MODELS if placement[m] == victim]
    kept = [m for m in MODELS if placement[m] != victim]
    assert kept, placement
    started = {m: threading.Event() for m in MODELS}

    def outcome(model: str, stream: bool) -> Reply | openai.APIError:
        try:
            return ask(cluster, model, stream=stream, long=True, first_token=started[model] if stream else None)
        except openai.APIError as e:
            return e

    with ThreadPoolExecutor(len(MODELS) + len(lost)) as pool:
        blocking = {m: pool.submit(outcome, m, False) for m in lost}
        streams = {m: pool.submit(outcome, m, True) for m in MODELS}
        for m in MODELS:
            assert started[m].wait(120), f"no first token for {m}"
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#{victim}", namespace="serve"), no_restart=True)
        watch = StatusWatch()
        # no hang: every in-flight request ends; the killed replica's with replica_failed, the others complete
        ended = {(m, "stream"): f.result(timeout=120) for m, f in streams.items()}
        ended |= {(m, "blocking"): f.result(timeout=120) for m, f in blocking.items()}
    for (m, kind), result in ended.items():
        if m in lost:
            assert isinstance(result, openai.APIError) and result.code == CODE, (m, kind, result)
            if kind == "blocking":
                assert isinstance(result, openai.APIStatusError) and result.status_code == 503
        else:
            assert isinstance(result, Reply) and result.finish_reason == "length", (m, kind, result)

    # Ray notices, starts a replacement, and is back to two running replicas
    try:
        wait_until(watch.recovered, 240, "Serve to replace the dead replica")
    finally:
        watch.stop()
    later = [ask(cluster, m, stream=stream) for m in MODELS for stream in (False, True)]
    assert all(r.finish_reason in ("stop", "length") for r in later), later
    replicas = {r.replica for r in later}
    assert victim not in replicas
    assert {r.replica for r in later if r.model in kept} == {placement[kept[0]]}  # the survivor keeps its own
    assert replicas - set(placement.values()), "no request reached the replacement replica"
