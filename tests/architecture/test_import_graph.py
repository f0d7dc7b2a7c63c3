"""The package import graph: no cycles anywhere (function-level imports included), and the HTTP layer
never imports the model or the kernels directly (it goes through the engine)."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "kernels", "router")
NO_DIRECT = {  # importer prefix -> imported prefixes it must not name
    "server.api": ("kernels", "server.model"),
    "server.cli": ("kernels", "server.model"),
    "kernels": ("server", "router"),
    "router": ("server.api", "server.cli"),
}


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    modules = {_module(p) for p in files}
    edges: dict[str, set[str]] = {}
    for path in files:
        me = _module(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != me:
                    targets.add(name)
        edges[me] = targets
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    edges = graph()
    assert _cycles(edges) == []


@pytest.mark.parametrize("importer", sorted(NO_DIRECT))
def test_layers_import_only_downwards(importer):
    banned = NO_DIRECT[importer]
    bad = sorted(f"{m} -> {t}" for m, ts in graph().items() if m == importer or m.startswith(importer + ".")
                 for t in ts if any(t == b or t.startswith(b + ".") for b in banned))
    assert bad == []


INTERNALS = re.compile(r"(?<!server\.)\b(engine|llm)\.(engine|runner|pool|scheduler|adapters|outputs|config)\b")


@pytest.mark.parametrize("folder", ["server/api", "server/ray_serve", "router"])
def test_the_engine_is_reached_through_its_facade_only(folder):
    """AsyncEngine's own methods, never attribute chains into LLMEngine's parts."""
    bad = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in sorted((REPO / folder).rglob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1) if INTERNALS.search(line)]
    assert bad == []


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


TOOLS = ("bench", "peft", "tests")  # benchmarks, trainers and their deps stay out of the installed package
TRAINING = re.compile(r"\b(optim\.\w+|\.backward\(\)|get_peft_model|LoraConfig|lr_scheduler)\b")


@pytest.mark.parametrize("package", PACKAGES)
def test_installed_packages_import_no_tools(package):
    bad = sorted(f"{p.relative_to(REPO)} -> {name}" for p in (REPO / package).rglob("*.py") for name in _imports(p)
                 if any(name == t or name.startswith(t + ".") for t in TOOLS))
    assert bad == []


@pytest.mark.parametrize("package", PACKAGES)
def test_installed_packages_hold_no_training_code(package):
    bad = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / package).rglob("*.py"))
           for i, line in enumerate(p.read_text().splitlines(), 1) if TRAINING.search(line)]
    assert bad == []
