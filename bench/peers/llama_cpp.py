"""llama.cpp as a benchmark peer: built here from the vendored tree of llama-cpp-python's PyPI sdist, fed GGUF
files of the same base weights and the same PEFT adapters loraplex serves, and llama-server as a serving system.

    python -m bench.peers.llama_cpp build                       # fetch + build (cached), print the commit
    python -m bench.peers.llama_cpp models                      # F32, Q8_0 and Q4_1 GGUF files of our base
    python -m bench.peers.llama_cpp serve --n 100 --parallel 16  # llama-server until Ctrl-C

Nothing of llama.cpp enters the repository: the sdist, the build and every converted file live under
default_cache_dir() / "llama.cpp" / VERSION. The base weights are ours: F32 converted from the dequantised
HF checkpoint loraplex loads, Q8_0 quantised from that F32, and Q4_1 the embedded GGUF file itself.
llama-server picks adapters per request (its `lora` field, by id) and batches only the slots whose adapter
list is equal, so one adapter runs per step. A request that names no adapter gets every adapter at the scale it
was loaded with, and --lora-init-without-apply leaves that scale at 1 (this version): base requests then ran
all 101 adapters at once (garbage output, 3.5x slower decode, measured). Adapters are therefore loaded with
--lora-scaled FILE:0; scale-0 adapters stay out of the graph (llama_context::set_adapters_lora).
"""

import argparse
import fcntl
import json
import math
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.peers import process, validate
from bench.peers.assets import adapter_names, adapters_dir, base_model_dir, strong_adapter
from bench.peers.systems import COMPUTE_THREADS, SERVED_NAME, System
from bench.serve import fetch_lora_ids
from server.config import default_cache_dir
from server.model.loader import default_model_path

VERSION = "0.3.36"  # llama-cpp-python on PyPI; its vendor/llama.cpp is what gets built
TARGETS = ("llama-server", "llama-bench", "llama-batched-bench", "llama-quantize")
CMAKE_FLAGS = ("-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DCMAKE_BUILD_TYPE=Release",
               # self-contained binaries; no network at build time (no UI download), no tests
               "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")
MODEL_KINDS = ("f32", "q8_0", "q4_1")
THREADS = 2  # every core of the development machine: llama-bench and llama-batched-bench
# llama-server in the comparison gets one compute thread like every other system there (systems.py): its two
# threads spin at each barrier and collapse when another process takes a core (10x slower decode, measured)
SERVER_THREADS = int(COMPUTE_THREADS)
CTX_PER_SLOT = 512  # tokens of KV per llama-server slot: the comparison's prompts + outputs stay under 128


@dataclass(frozen=True, slots=True)
class Build:
    version: str  # llama-cpp-python version the tree came from
    commit: str  # the vendored llama.cpp commit
    source: Path  # vendor/llama.cpp
    bin_dir: Path  # where TARGETS are

    def binary(self, name: str) -> Path:
        return self.bin_dir / name


def cache_root(version: str = VERSION) -> Path:
    return default_cache_dir() / "llama.cpp" / version


@contextmanager
def _locked(root: Path):
    """One process builds or converts at a time; the others wait and then find the result."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run(cmd: list, log: Path, **kwargs) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        out.flush()
        done = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{cmd[0]} failed (rc {done.returncode}); log {log}:\n{tail}")


def _commit(source: Path) -> str:
    done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def ensure_built(version: str = VERSION) -> Build:
    """Download the sdist with pip, extract it, build TARGETS with cmake (-j2); idempotent, cached."""
    root = cache_root(version)
    stamp = root / "build.json"
    with _locked(root):
        if stamp.is_file():
            info = json.loads(stamp.read_text())
            build = Build(info["version"], info["commit"], Path(info["source"]), Path(info["bin_dir"]))
            if all(build.binary(t).is_file() for t in TARGETS):
                return build
        log = root / "build.log"
        sdist = root / "sdist"
        if not (sdist / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  f"llama-cpp-python=={version}", "-d", root / "dist"], log)
            tmp = root / "sdist.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(root / "dist" / f"llama_cpp_python-{version}.tar.gz") as tar:
                tar.extractall(tmp, filter="tar")
            shutil.rmtree(sdist, ignore_errors=True)
            (tmp / f"llama_cpp_python-{version}").rename(sdist)
            tmp.rmdir()
        source = sdist / "vendor" / "llama.cpp"
        t0 = time.monotonic()
        _run(["cmake", "-S", source, "-B", root / "build", *CMAKE_FLAGS], log)
        _run(["cmake", "--build", root / "build", "-j2", "--target", *TARGETS], log)
        build = Build(version, _commit(source), source, root / "build" / "bin")
        stamp.write_text(json.dumps({"version": version, "commit": build.commit, "source": str(source),
                                     "bin_dir": str(build.bin_dir), "cmake_flags": CMAKE_FLAGS,
                                     "targets": TARGETS, "build_s": round(time.monotonic() - t0)}, indent=1))
    print(f"llama.cpp {build.commit} (llama-cpp-python {version}) built in {root / 'build'}", file=sys.stderr)
    return build


def convert_model(kind: str) -> Path:
    """Our base model as a GGUF file of `kind`: f32 (from the HF checkpoint), q8_0 (from f32), q4_1 (embedded)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    if kind == "q4_1":
        return default_model_path()
    build = ensure_built()
    hf = base_model_dir()
    out = cache_root() / "models" / f"{hf.name}.{kind}.gguf"  # the HF dir's name carries the checkpoint's key
    if out.is_file():
        return out
    f32 = convert_model("f32") if kind == "q8_0" else None
    with _locked(cache_root()):
        if out.is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp, log = out.with_name(out.name + ".tmp"), out.with_suffix(".log")
        if kind == "f32":
            _run([sys.executable, build.source / "convert_hf_to_gguf.py", hf, "--outtype", "f32", "--outfile", tmp],
                 log)
        else:
            _run([build.binary("llama-quantize"), f32, tmp, "Q8_0", str(THREADS)], log)
        tmp.rename(out)
    return out


# convert_lora_to_gguf.py per adapter in one interpreter: torch and the conversion package load once
_LORA_DRIVER = """
import json, runpy, sys
source, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, source)
for lora_dir, base, outfile in jobs:
    sys.argv = ["convert_lora_to_gguf.py", lora_dir, "--base", base, "--outfile", outfile, "--outtype", "f32"]
    runpy.run_path(source + "/convert_lora_to_gguf.py", run_name="__main__")
"""


def _stage_adapter(adapter_dir: Path, stage: Path) -> Path:
    """The adapter with lora_alpha such that llama.cpp's scale alpha / r equals PEFT's (alpha / sqrt(r) under
    rsLoRA, which the converter does not read); weights linked, not copied."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_rslora"):
        config["lora_alpha"] = config["lora_alpha"] * math.sqrt(config["r"])
    out = stage / adapter_dir.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config))
    link = out / "adapter_model.safetensors"
    link.unlink(missing_ok=True)
    link.symlink_to((adapter_dir / "adapter_model.safetensors").resolve())
    return out


def lora_path(adapter_dir: Path) -> Path:
    return cache_root() / "loras" / adapter_dir.parent.name / f"{adapter_dir.name}.gguf"


def convert_loras(adapter_dirs: list[Path]) -> list[Path]:
    """PEFT adapter directories -> f32 GGUF LoRA files (named after the directory), converted once."""
    outs = [lora_path(d) for d in adapter_dirs]
    if all(o.is_file() for o in outs):
        return outs
    build, base = ensure_built(), base_model_dir()
    with _locked(cache_root()):
        todo = [(d, o) for d, o in zip(adapter_dirs, outs, strict=True) if not o.is_file()]
        if todo:
            stage = cache_root() / "loras" / ".stage"
            jobs = [(str(_stage_adapter(d, stage / d.parent.name)), str(base), str(o.with_suffix(".tmp")))
                    for d, o in todo]
            for _, o in todo:
                o.parent.mkdir(parents=True, exist_ok=True)
            log = cache_root() / "loras" / "convert.log"
            t0 = time.monotonic()
            _run([sys.executable, "-c", _LORA_DRIVER, build.source, json.dumps(jobs)], log)
            for _, o in todo:
                o.with_suffix(".tmp").rename(o)
            print(f"converted {len(todo)} adapters in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    return outs


def convert_lora(adapter_dir: Path) -> Path:
    return convert_loras([adapter_dir])[0]


def server_command(build: Build, port: int, model: Path, loras: list[Path], parallel: int,
                   threads: int = SERVER_THREADS) -> list[str]:
    """llama-server with `parallel` slots of CTX_PER_SLOT tokens; adapters loaded at scale 0, so a request that
    names none runs the base model and one that names one runs it alone (the module doc says why)."""
    cmd = [str(build.binary("llama-server")), "--model", str(model), "--alias", SERVED_NAME,
           "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads), "--parallel", str(parallel),
           "--ctx-size", str(parallel * CTX_PER_SLOT), "--no-webui"]
    if any(":" in str(f) or "," in str(f) for f in loras):
        raise ValueError("--lora-scaled splits on ':' and ','; adapter paths must hold neither")
    return cmd + (["--lora-scaled", ",".join(f"{f}:0" for f in loras)] if loras else [])


def adapters_for(n: int) -> list[Path]:
    """The comparison's adapter directories at n (synth-0000 ... and `strong`), in id order."""
    if not n:
        return []
    root = adapters_dir(n)
    return [root / name for name in adapter_names(n)] + [strong_adapter()]


def start(port: int, n: int, log: Path, kind: str = "f32", parallel: int = 16,
          threads: int = SERVER_THREADS) -> process.ServerProcess:
    """llama-server on our base model (`kind`) with n synthetic adapters + `strong`; none at all when n = 0."""
    build = ensure_built()
    loras = convert_loras(adapters_for(n))
    return process.start("llama-server", server_command(build, port, convert_model(kind), loras, parallel, threads),
                         port, log)


def greedy_outputs(url: str, models: list[str] = validate.MODELS) -> dict[str, list[str]]:
    """validate.greedy_outputs for llama-server: an adapter is named by the request's lora field, not its model."""
    ids = fetch_lora_ids(url)
    out = {}
    for model in models:
        texts = []
        for prompt in validate.PROMPTS:
            body = {"model": model, "prompt": prompt, "max_tokens": validate.NEW_TOKENS, "temperature": 0,
                    "ignore_eos": True}
            if model != SERVED_NAME:
                body["lora"] = [{"id": ids[model], "scale": 1.0}]
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
            r.raise_for_status()
            texts.append(r.json()["choices"][0]["text"])
        out[model] = texts
    return out


SERVE_ARGS = ("--lora-field",)  # bench/serve.py run: name adapters by the lora field
PARALLEL = 16  # llama-server slots in the comparison (requests in flight at once; more wait in its queue)
SYSTEMS = {
    "llama-server": System("llama-server", f"llama.cpp llama-server (llama-cpp-python {VERSION}'s tree), F32 GGUF "
                           f"of our base, --threads {SERVER_THREADS} --parallel {PARALLEL} --ctx-size "
                           f"{PARALLEL * CTX_PER_SLOT}, every adapter loaded at scale 0 "
                           "(--lora-scaled FILE:0, f32 GGUF), chosen per request by its lora field",
                           lambda port, n, log: start(port, n, log, parallel=PARALLEL)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="fetch and build llama.cpp (cached)")
    sub.add_parser("models", help="the F32, Q8_0 and Q4_1 GGUF files of our base model")
    s = sub.add_parser("serve", help="llama-server with n synthetic adapters until Ctrl-C")
    s.add_argument("--port", type=int, default=8102)
    s.add_argument("--n", type=int, default=100, help="synthetic adapters loaded (0: none, the base alone)")
    s.add_argument("--kind", default="f32", choices=MODEL_KINDS)
    s.add_argument("--parallel", type=int, default=PARALLEL)
    s.add_argument("--threads", type=int, default=SERVER_THREADS)
    s.add_argument("--log", default="/tmp/llama-server.log")
    args = ap.parse_args()
    if args.cmd == "build":
        print(ensure_built())
    elif args.cmd == "models":
        for kind in MODEL_KINDS:
            print(kind, convert_model(kind))
    else:
        server = start(args.port, args.n, Path(args.log), args.kind, args.parallel, args.threads)
        print(f"llama-server healthy at {server.url} after {server.start_s:.0f}s (log {args.log}); Ctrl-C stops it")
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while server.alive():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            process.stop(server)


if __name__ == "__main__":
    main()
