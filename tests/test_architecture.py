"""The shape of the house: no import cycles, no private names across modules, declared backends conform.

The import graph is read from the source (``ast``), function-level imports
included: a cycle through a lazy import is still a cycle in the design. Imports
under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgepack"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "templates" in path.parts:  # run.py runs on the device; it imports nothing of edgepack
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _runtime_imports(path: Path, name: str, modules: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> [(imported name, line)] for every edgepack import that can run (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: dict[str, list[tuple[str, int]]] = {}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [(base, a.name) for a in node.names]
        else:
            continue
        for base, member in targets:
            if not base.startswith("edgepack"):
                continue
            full = f"{base}.{member}" if member and f"{base}.{member}" in modules else base
            if full in modules and full != name:
                edges.setdefault(full, []).append((member or "", node.lineno))
    return edges


def _graph() -> dict[str, dict[str, list[tuple[str, int]]]]:
    modules = _modules()
    return {name: _runtime_imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, dict[str, list[tuple[str, int]]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles (function-level imports included): {cycles}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    planted = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}
    assert _cycles(planted) == [["a", "b", "c"]]


def test_no_module_imports_a_private_name_of_another() -> None:
    leaks = [
        f"{module} imports {member} from {target} (line {line})"
        for module, edges in _graph().items()
        for target, members in edges.items()
        for member, line in members
        if member.startswith("_") and not member.startswith("__")
    ]
    assert not leaks, "\n".join(leaks)


def test_no_private_module_is_imported_from_outside_its_package() -> None:
    leaks = [
        f"{module} imports {target}"
        for module, edges in _graph().items()
        for target in edges
        if target.rpartition(".")[2].startswith("_")
        and not module.startswith(target.rpartition(".")[0] + ".")
        and module != target.rpartition(".")[0]
    ]
    assert not leaks, "\n".join(leaks)


# --------------------------------------------------------------------------- declared backends


def _check_signature(module: object, function: str, protocol: type) -> None:
    implemented = inspect.signature(getattr(module, function))
    declared = inspect.signature(getattr(protocol, function))
    declared_params = [p for p in declared.parameters.values() if p.name != "self"]
    names = [(p.name, p.kind) for p in implemented.parameters.values()]
    assert names == [(p.name, p.kind) for p in declared_params], f"{module}.{function}{implemented} != {declared}"


def test_every_quantize_backend_implements_the_interface() -> None:
    from edgepack.quantize import BACKENDS
    from edgepack.quantize.backend import QuantizeBackend

    for runtime, module_name in BACKENDS.items():
        module = importlib.import_module(module_name)
        assert isinstance(module, QuantizeBackend), f"{module_name} (for {runtime.value}) lacks the interface"
        for function in ("quantize", "layer_errors"):
            _check_signature(module, function, QuantizeBackend)


def test_every_runtime_backend_implements_the_interface() -> None:
    from edgepack.runtimes import BACKENDS
    from edgepack.runtimes.backend import RuntimeBackend

    for fmt, module_name in BACKENDS.items():
        module = importlib.import_module(module_name)
        assert isinstance(module, RuntimeBackend), f"{module_name} (for {fmt.value}) lacks open_session"
        _check_signature(module, "open_session", RuntimeBackend)


def test_every_device_runner_implements_the_interface() -> None:
    from edgepack.emulator import RUNNERS, Runner
    from edgepack.profiles import load_profile

    profile = load_profile("rpi4-arm64")
    for kind in ("native", "qemu-user"):  # docker and ssh need an engine or a host to construct
        runner = RUNNERS[kind](profile)
        assert isinstance(runner, Runner), kind
        assert runner.name == kind
    for module_name, cls in (("edgepack.emulator.docker", "DockerRunner"), ("edgepack.emulator.ssh", "SshRunner")):
        runner_class = getattr(importlib.import_module(module_name), cls)
        assert callable(getattr(runner_class, "run", None)) and isinstance(runner_class.name, str), cls


def test_every_stage_implements_the_interface_once() -> None:
    from edgepack.stages import ARTIFACT_STAGES, BUNDLE_STAGES, Stage

    stages = (*ARTIFACT_STAGES, *BUNDLE_STAGES)
    assert all(isinstance(stage, Stage) for stage in stages)
    names = [stage.name for stage in stages]
    assert len(names) == len(set(names)), names


def test_no_module_imports_a_heavy_framework_at_import_time() -> None:
    """Lazy heavy imports: importing every edgepack module, one after another, loads none of the big frameworks."""
    import subprocess
    import sys

    heavy = ("tensorflow", "onnxruntime", "openvino", "onnxsim", "nncf", "torch", "onnx2tf", "tf2onnx", "onnx")
    code = (
        "import sys, importlib\n"
        f"for name in {sorted(m for m in _modules() if not m.endswith('__main__'))!r}:\n"
        "    importlib.import_module(name)\n"
        f"    loaded = [m for m in {heavy!r} if m in sys.modules]\n"
        "    if loaded:\n"
        "        print(name, 'loads', ','.join(loaded)); break\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not result.stdout.strip(), result.stdout
