"""The code's shape as the README's architecture section promises it: small modules, no import cycles, one
module (pipeline/catalog.py) that composes the locations of datasets, thin DAG files."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "pipeline"
MAX_LINES = 400
# Folder and file names of datasets: joining one of these onto a path is the catalog's job.
DATASET_NAMES = {"interactions", "items", "quarantine", "recommendations", "features", "item_embeddings", "models",
                 "staging", "reports", "landing", "lake", "events", "mlflow", "consumer", "runs"}
PATH_SETTINGS = {"lake_dir", "landing_dir", "warehouse_path", "home"}
ALLOWED = {"catalog.py", "config.py"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_no_module_over_the_line_limit() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `name` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt == node.rsplit(".", 1)[0]:
                continue  # a module importing its own package's __init__ is not a cycle of logic
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}"
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def _path_compositions(path: Path) -> list[str]:
    """Places that build a dataset location: `x / "lake"`, f"dt={...}", settings.paths.lake_dir, ..."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and isinstance(side.value, str) and side.value in DATASET_NAMES:
                    found.append(f"line {node.lineno}: / {side.value!r}")
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if text.startswith("dt=") or "/dt=" in text:
                found.append(f"line {node.lineno}: f-string partition name")
        if isinstance(node, ast.Attribute) and node.attr in PATH_SETTINGS and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "paths":
            found.append(f"line {node.lineno}: .paths.{node.attr}")
    return found


def test_only_the_catalog_composes_dataset_locations() -> None:
    offenders = {str(path.relative_to(REPO)): hits for path in sorted(PACKAGE.rglob("*.py"))
                 if path.name not in ALLOWED and (hits := _path_compositions(path))}
    assert not offenders, f"compose locations through pipeline.catalog instead: {offenders}"


def test_dag_files_import_only_light_modules_at_the_top() -> None:
    heavy = {"torch", "transformers", "duckdb", "mlflow", "pyarrow", "numpy", "pandas"}
    for path in (REPO / "dags").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {(a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
                 for n in top for a in n.names}
        assert not names & heavy, f"{path.name} imports {names & heavy} at parse time"
