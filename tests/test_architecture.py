"""The import graph points down only (docs/ARCHITECTURE.md).

Layers, bottom to top: the pure core (`lens_core`, split by stage of the chain), the reference
engine and the LVM core beside it, then the Dagster layer (resources, data tests, the domains'
assets, schedules), then the entry points (`lens_cli`, `definitions.py`). A module may import
from its own package or stage and from layers below it; never from a layer above or from a
sibling of the same rank. Project imports sit at module level, except a lazy import whose line
says why (`# lazy: ...`), kept for start-up time or a heavy optional dependency.

The test parses every product module with `ast` (nothing is imported), so it also fails on a
cycle the interpreter would tolerate.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top-level packages: a higher rank may import a lower one; equal ranks only themselves.
PACKAGE_RANK = {
    "lens_core": 0,
    "lens_engine": 1,
    "lvm_core": 1,
    "resources": 2,
    "dbt_like_checks": 3,
    "lens_assets": 4,
    "lvm_assets": 4,
    "schedules": 5,
    "lens_cli": 6,
    "definitions": 6,
}
# Stages of the pure core, in the order of the chain's dependencies.
STAGE_RANK = {
    "common": 0,
    "stats": 1,
    "measures": 2,
    "collect": 2,
    "sim": 3,
    "ingest": 3,
    "judge": 3,
    "calibrate": 3,
    "decide": 4,
    "publish": 5,
    "monitor": 6,
}
PRODUCT_DIRS = [p for p in PACKAGE_RANK if (REPO / p).is_dir()]


def _modules() -> dict[str, Path]:
    out = {"definitions": REPO / "definitions.py"}
    for pkg in PRODUCT_DIRS:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (the longest known prefix), or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def _imports(mod: str, path: Path) -> list[tuple[str, int, bool, str]]:
    """(target module, line, at module level, source line) for every project import."""
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src, filename=str(path))
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` / `try:` blocks at module level are module level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(c) for c in ast.walk(n)}
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            target = _resolve(name)
            if target and target != mod:
                text = " ".join(lines[max(node.lineno - 2, 0) : node.end_lineno])  # the statement and the line above
                out.append((target, node.lineno, id(node) in top, text))
    return out


def _rank(mod: str) -> tuple[str, int, str | None, int]:
    top = mod.split(".")[0]
    stage = mod.split(".")[1] if top == "lens_core" and mod.count(".") >= 1 else None
    return top, PACKAGE_RANK[top], stage, STAGE_RANK.get(stage, -1) if stage else -1


def _violation(src: str, dst: str) -> str | None:
    s_top, s_rank, s_stage, s_srank = _rank(src)
    d_top, d_rank, d_stage, d_srank = _rank(dst)
    if s_top != d_top:
        if d_rank >= s_rank:
            return f"{src} imports {dst}: package {d_top} is not below {s_top}"
        return None
    if s_top == "lens_core" and s_stage != d_stage:
        if d_stage is None:
            return f"{src} imports the package root {dst}"
        if s_stage is None:
            return None
        if d_srank >= s_srank:
            return f"{src} imports {dst}: stage {d_stage} is not below {s_stage}"
    return None


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_stage_is_ranked():
    stages = {p.name for p in (REPO / "lens_core").iterdir() if (p / "__init__.py").is_file()}
    assert stages <= set(STAGE_RANK), f"unranked stage folders: {sorted(stages - set(STAGE_RANK))}"
    tops = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} - {"tests", "benchmarks"}
    assert tops <= set(PACKAGE_RANK), f"unranked packages: {sorted(tops - set(PACKAGE_RANK))}"


def test_imports_point_down_only():
    bad = [
        f"{MODULES[s].relative_to(REPO)}:{line}: {msg}"
        for s, edges in GRAPH.items()
        for d, line, _, _ in edges
        if (msg := _violation(s, d))
    ]
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    bad = []
    for s, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and _resolve(node.module):
                for a in node.names:
                    target = _resolve(f"{node.module}.{a.name}")
                    own_package = _resolve(node.module) in (s, s.rpartition(".")[0])
                    if (
                        a.name.startswith("_")
                        and not a.name.startswith("__")
                        and target == _resolve(node.module)
                        and not own_package
                    ):
                        bad.append(f"{p.relative_to(REPO)}:{node.lineno}: imports private {node.module}.{a.name}")
    assert not bad, "\n".join(bad)


def test_project_imports_at_module_level_unless_lazy_with_reason():
    bad = [
        f"{MODULES[s].relative_to(REPO)}:{line}: in-function import of {d} without '# lazy: <why>'"
        for s, edges in GRAPH.items()
        for d, line, top, text in edges
        if not top and "# lazy:" not in text
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = {s: {d for d, _, top, _ in GRAPH[s] if top} for s in GRAPH}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (cycle := visit(n)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_rules_catch_what_they_claim():
    """The checker itself: an upward import, a sideways stage import and a cycle are flagged."""
    assert _violation("lens_core.common.settings", "lens_core.decide.gates")
    assert _violation("lens_core.measures.metrics", "lens_core.collect.rawruns")
    assert _violation("lens_core.decide.gates", "lens_assets.assets")
    assert _violation("lens_assets.assets", "lvm_assets.assets")
    assert _violation("lens_core.publish.bundle", "lens_core.common.hashing") is None
    assert _violation("lens_cli.main", "lens_assets.run") is None


MAX_LINES = 500


def test_no_long_module_without_a_reason():
    """A product module over 500 lines says why at its top (`Why this is one module: ...`)."""
    bad = []
    for m, p in MODULES.items():
        text = p.read_text()
        if text.count("\n") > MAX_LINES and "Why this is one module:" not in (ast.get_docstring(ast.parse(text)) or ""):
            bad.append(f"{p.relative_to(REPO)}: {text.count(chr(10))} lines")
    assert not bad, "\n".join(bad)
