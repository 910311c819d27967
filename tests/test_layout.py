"""The package's shape: no import cycles, light modules stay light, family facts stay in their adapters."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "asymrnr"
#: Where a model family may be named: its adapter, presets and fixtures, shipped data.
FAMILY_HOMES = ("archs", "models", "micro", "testing", "data")
FAMILY_WORDS = re.compile(r"cogvideox|CogVideoX|Wan[A-Z]|HunyuanVideo|LTXVideo|Mochi[A-Z]")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of the package imported at module level (not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("asymrnr")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("asymrnr"):
                continue
            out.add(mod)
            for alias in node.names:  # "from . import vocab" imports a submodule
                if (SRC.parent / mod.replace(".", "/") / f"{alias.name}.py").exists():
                    out.add(f"{mod}.{alias.name}")
    return out


def test_no_import_cycles_at_module_level():
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {m: {i for i in _top_level_imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a module also imports its parent packages' __init__ when imported; only explicit edges count here
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


@pytest.mark.parametrize("module", [
    "asymrnr", "asymrnr.vocab", "asymrnr.schedule_format", "asymrnr.formats.schedule", "asymrnr.archs",
    "asymrnr.flops", "asymrnr.planner", "asymrnr.models.presets", "asymrnr.testing",
])
def test_light_modules_import_without_torch(module):
    """Reading a schedule, planning and describing families never needs torch or diffusers."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None\n"
        f"import {module}\n"
        "import asymrnr.archs as a; [x.family for x in a.all_adapters()]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_families_are_named_only_in_their_homes():
    """The rest of the package asks the adapters; it never names a family (docs excepted)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in FAMILY_HOMES:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FAMILY_WORDS.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
