"""Layering: the compiler side never loads torch, and the runtime never reaches into the compiler or simulator.

The plan is the only thing passed between them, so a worker needs chipfuse.plan and the formats, not
chipfuse.compile or chipfuse.sim. Each check runs in a fresh interpreter, so nothing imported by other
tests hides an import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import chipfuse

PURE = ("chipfuse.hw", "chipfuse.ir", "chipfuse.compile", "chipfuse.plan", "chipfuse.sim", "chipfuse.explore")
RUNTIME_DIR = Path(chipfuse.__file__).parent / "runtime"
FORBIDDEN = ("chipfuse.compile", "chipfuse.sim")

IMPORT_ALL = """
import importlib, json, pkgutil, sys
names = []
for pkg in json.loads(sys.argv[1]):
    mod = importlib.import_module(pkg)
    names += [pkg] + [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
for extra in json.loads(sys.argv[2]):
    names.append(extra)
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "modules": sorted(sys.modules)}))
"""


def _import_all(packages: list[str], modules: list[str] = ()) -> dict:
    """Import every module of `packages` (and `modules`) in a fresh interpreter: what it loaded."""
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL, json.dumps(packages), json.dumps(list(modules))],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_compiler_side_imports_no_torch():
    res = _import_all(list(PURE), ["chipfuse.quant.formats"])
    assert len(res["imported"]) > len(PURE)
    assert "torch" not in res["modules"], "a compiler-side module imports torch"


def test_importing_the_runtime_loads_no_compiler_or_simulator():
    res = _import_all(["chipfuse.runtime"])
    loaded = [m for m in res["modules"] if m.startswith(FORBIDDEN)]
    assert not loaded, f"importing chipfuse.runtime loads {loaded}"


def _runtime_imports_of(path: Path) -> list[str]:
    """'file:line module' for every import of chipfuse.compile or chipfuse.sim in a runtime file, even inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = "chipfuse.runtime".rsplit(".", node.level - 1)[0] if node.level else ""
            name = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            names = [name] + [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        if any(n.startswith(FORBIDDEN) for n in names):
            found.append(f"{path.name}:{node.lineno} {names[0]}")
    return found


def test_no_runtime_module_imports_the_compiler_or_simulator_anywhere():
    found = [x for f in sorted(RUNTIME_DIR.glob("*.py")) for x in _runtime_imports_of(f)]
    assert not found, "runtime modules import the compiler or simulator: " + ", ".join(found)
