"""The project's import graph: no cycles, dependencies point inward, and the ONNX serving
path never imports torch.

The graph is read from the source (module-level and function-level ``import``
statements, relative ones resolved), not from what a run happens to import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vit", "training", "export", "demo", "benchmarks")

# (importer package, what it may not import): a prefix of a module name
FORBIDDEN = {
    "vit": ("training", "export", "demo", "benchmarks", "lightning", "onnx", "onnxruntime", "onnxscript",
            "gradio", "gradio_client"),
    "export": ("training", "demo", "benchmarks", "lightning", "gradio"),
    "demo": ("training", "benchmarks", "lightning"),
    "training": ("demo", "export", "benchmarks", "gradio", "onnxruntime"),
}
# what serves an ONNX model: their module-level imports, followed through the project, reach no torch
SERVING = ("export.onnx_classifier", "export.onnx_translator", "export.translator", "export.predict",
           "export.translate", "export.evaluate", "demo.app", "demo.views", "demo.backend", "demo.overlay",
           "demo.translate_tab")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level:  # ``from . import x``: x may be a submodule
                found += [(f"{target}.{alias.name}", id(node) in top) for alias in node.names]
            found.append((target, id(node) in top))
    return found


def project_graph() -> dict[str, list[tuple[str, bool]]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = []
        for target, top_level in imports_of(path):
            if target.split(".")[0] in PACKAGES:
                # ``from pkg import name`` of a non-module attribute points at the package itself
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    edges.append((target, top_level))
            else:
                edges.append((target, top_level))
        graph[name] = list(dict.fromkeys(edges))
    return graph


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, bool]]]:
    return project_graph()


def test_the_graph_sees_the_project(graph: dict) -> None:
    assert {"vit.attention", "vit.checkpoint", "export.onnx_classifier", "demo.app", "training.train"} \
        <= set(graph)
    edges = {t for t, _ in graph["vit.checkpoint"]}
    assert {"vit.seq2seq", "vit.vit", "torch"} <= edges  # module-level, relative and absolute imports
    lazy = [(t, top) for t, top in graph["export.cli"] if t == "export.vit_export"]
    assert lazy == [("export.vit_export", False)]  # function-level imports are edges too


def test_no_import_cycles(graph: dict) -> None:
    project = {name: sorted({t for t, _ in edges if t in graph}) for name, edges in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in project[node]:
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(project):
        if node not in state:
            visit(node)


def test_dependencies_point_inward(graph: dict) -> None:
    bad = []
    for name, edges in graph.items():
        banned = FORBIDDEN.get(name.split(".")[0], ())
        for target, _ in edges:
            if any(target == b or target.startswith(b + ".") for b in banned):
                bad.append(f"{name} -> {target}")
    assert not bad, "forbidden imports: " + ", ".join(sorted(set(bad)))


def test_serving_modules_import_no_torch_at_load(graph: dict) -> None:
    for start in SERVING:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            for target, top_level in graph.get(node, []):
                if not top_level:
                    continue
                assert target.split(".")[0] != "torch", f"{start} imports torch through {node}"
                if target in graph:
                    todo.append(target)


SERVE_WITHOUT_TORCH = """
import sys
from pathlib import Path
data = Path(sys.argv[1])
from export.onnx_classifier import OnnxClassifier
from export.translate import load_translator
from demo.app import build_app
from demo.backend import load_backend
import numpy as np
clf = OnnxClassifier(data / "vit_conv.onnx")
clf.predict(np.zeros((32, 32, 3), dtype=np.uint8))
assert clf.class_map(np.zeros((3, 32, 32), dtype=np.float32), 1).shape == clf.info.grid  # rise
backend = load_backend(data / "vit_conv.onnx")
from PIL import Image
analysis = backend.analyze(Image.new("RGB", (40, 32), (90, 120, 30)))
assert analysis.class_map is not None and backend.explain(analysis.pixels, 0) is not None
translator = load_translator(data / "seq2seq_onnx")
translator.translate(["ein hund"], beam=2, return_attention=True)
build_app(backend, translator=data / "seq2seq_onnx")
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("no torch")
"""


def test_serving_an_onnx_model_never_imports_torch() -> None:
    """Classify, draw a class map, translate and build the demo on ONNX files in a fresh
    interpreter."""
    data = REPO / "tests" / "data" / "compat"
    out = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_TORCH, str(data)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "no torch" in out.stdout
