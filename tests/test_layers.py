"""The package's layers point one way (docs/design.md, "Layers"): this test reads every import of
bulkgen_cli with `ast` (at module top, inside functions, under TYPE_CHECKING: a type is a dependency too)
and checks the arrows, that no modules import each other in a cycle, and that nothing below the front ends
imports a front end or its libraries."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bulkgen_cli"

#: Each layer (a folder of bulkgen_cli) and the layers it may import besides itself. The table of
#: docs/design.md, "Layers", says the same; `test_the_design_shows_these_layers` holds them together.
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "input": {"core"},
    "store": {"core", "input"},
    "content": {"core", "input"},
    "delivery": {"core", "input", "store"},
    "engine": {"core", "input", "store", "content", "delivery"},
    "ops": {"core", "input", "store", "content", "delivery"},
    "server": {"core", "input", "store", "content", "delivery", "engine", "ops"},
    "cli": {"core", "input", "store", "content", "delivery", "engine", "ops", "server"},
}
FRONT_ENDS = {"cli", "server"}
#: Libraries only a front end may import.
FRONT_END_LIBRARIES = {"rich", "typer", "fastapi", "starlette", "uvicorn"}

@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # a module of bulkgen_cli, or a top-level name of another distribution
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in the file, as the module of ours it loads (or the outside distribution's name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                here = here[:len(here) - node.level + 1]
                base = ".".join(here + ([node.module] if node.module else []))
            # `from pkg import mod` loads the module pkg.mod; `from mod import thing` loads mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("bulkgen_cli"):
                target = target.split(".")[0]
            else:
                while target not in known:  # import bulkgen_cli.core.model.thing -> the module
                    target = target.rsplit(".", 1)[0]
            if target != name:
                found.append(Import(name, target, node.lineno))
    return found


def graph(package: Path = PACKAGE) -> list[Import]:
    found = modules(package)
    return [i for name, path in found.items() for i in imports_of(name, path, set(found))]


def layer(module: str) -> str:
    """The folder a module lives in; the package's root (its version) and `__main__` count as core and cli."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def wrong_arrows(edges: list[Import]) -> list[str]:
    wrong = []
    for i in edges:
        low = layer(i.importer) not in FRONT_ENDS
        if i.imported.startswith("bulkgen_cli"):
            here, there = layer(i.importer), layer(i.imported)
            if there != here and there not in MAY_IMPORT[here]:
                wrong.append(f"{i.importer} (line {i.line}) imports {i.imported}: {here} may not import {there}")
        elif low and i.imported in FRONT_END_LIBRARIES:
            wrong.append(f"{i.importer} (line {i.line}) imports {i.imported}, a front end's library")
    return sorted(set(wrong))


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted; none is allowed."""
    follows: dict[str, set[str]] = {}
    for i in edges:
        if i.imported.startswith("bulkgen_cli"):
            follows.setdefault(i.importer, set()).add(i.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(follows.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(follows):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_the_graph_is_read_whole():
    edges = graph()
    pairs = {(i.importer, i.imported) for i in edges}
    # a top-level import, one inside a function and one under TYPE_CHECKING are all seen
    assert ("bulkgen_cli.engine.processor", "bulkgen_cli.engine.attempt") in pairs
    assert ("bulkgen_cli.cli.main", "bulkgen_cli.cli.serve") in pairs
    assert ("bulkgen_cli.ops.jobs", "bulkgen_cli.input.manifest") in pairs
    assert {layer(m) for m in modules()} == set(MAY_IMPORT)


def test_layers_import_only_downwards():
    assert wrong_arrows(graph()) == []


def test_no_import_cycles():
    found = cycles(graph())
    assert found == [], "modules importing each other: " + "; ".join(" <-> ".join(g) for g in found)


def test_the_checks_catch_a_wrong_arrow_and_a_cycle(tmp_path):
    """The checks themselves: a copy of two layers with a forbidden import and a loop is refused."""
    pkg = tmp_path / "bulkgen_cli"
    for folder, files in {"core": {"model.py": "import rich\nfrom bulkgen_cli.ops import jobs\n"},
                          "ops": {"jobs.py": "def f():\n    from bulkgen_cli.ops.items import x\n",
                                  "items.py": "from . import jobs\n"}}.items():
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
        for name, text in files.items():
            (pkg / folder / name).write_text(text)
    (pkg / "__init__.py").write_text("")
    edges = graph(pkg)
    assert wrong_arrows(edges) == [
        "bulkgen_cli.core.model (line 1) imports rich, a front end's library",
        "bulkgen_cli.core.model (line 2) imports bulkgen_cli.ops.jobs: core may not import ops",
    ]
    assert cycles(edges) == [["bulkgen_cli.ops.items", "bulkgen_cli.ops.jobs"]]


def test_the_design_shows_these_layers():
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    table = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    for name, allowed in MAY_IMPORT.items():
        row = next((line for line in table.splitlines() if line.startswith(f"| `{name}/`")), None)
        assert row is not None, f"docs/design.md, \"Layers\" has no row for {name}/"
        cells = row.split("|")
        said = {w.strip("` /") for w in cells[3].replace(",", " ").split()} - {"nothing", "—", ""}
        assert said == allowed, f"{name}/: design.md says it may import {sorted(said)}, the test {sorted(allowed)}"
