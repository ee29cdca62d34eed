"""The package's structure: imports point one way, and only the dispatch table knows families.

The import graph is read from the source with ``ast`` (nothing is imported), counting every
``import`` and ``from ... import`` of an hwcomp module, at module level or inside a function.
A cycle fails the test with the modules on it.
"""

import ast
import re
from pathlib import Path

import networkx as nx

from tests.conftest import REPO

PACKAGE = REPO / "hwcomp"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> nx.DiGraph:
    """Edges ``a -> b`` for every hwcomp module ``a`` that imports module ``b``."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                # "from pkg import sub" imports the submodule; "from mod import name" the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    graph.add_edge(name, target)
    return graph


def test_hwcomp_has_no_import_cycle():
    cycles = list(nx.simple_cycles(import_graph(PACKAGE)))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    # The check above would fail on a cycle: two modules that import each other, one of
    # them inside a function (the usual way a cycle is hidden), and one relative import.
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    cycles = list(nx.simple_cycles(import_graph(package)))
    assert [sorted(cycle) for cycle in cycles] == [["pkg.a", "pkg.sub.b"]]


# A comparison or lookup on a profile's family or runtime: what only the dispatch table may do.
_FAMILY_BRANCH = re.compile(
    r"\.(family|runtime)\s*(==|!=|\bin\b|\bnot in\b)|\[\s*\w+\.(family|runtime)\s*\]"
    r"|\bget\(\s*\w+\.(family|runtime)")
_ALLOWED = {"hwcomp/lower/__init__.py", "hwcomp/targets.py"}


def test_only_the_dispatch_table_branches_on_a_family():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative in _ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _FAMILY_BRANCH.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "family/runtime branches outside lower/__init__.py:\n" + "\n".join(found)


def test_the_branch_check_sees_a_branch():
    assert _FAMILY_BRANCH.search('if target.runtime == "c":')
    assert _FAMILY_BRANCH.search("return TABLE[target.family]")
    assert _FAMILY_BRANCH.search("DOT.get(target.family)")
    assert not _FAMILY_BRANCH.search('logger.info("compiling for %s (%s)", target.name, target.family)')
