"""The package's import graph has no circle: every import counts, at the top of a module or inside a function (an
import moved into a function to dodge a circle is still a circle)."""

import ast
from pathlib import Path

import medue

ROOT = Path(medue.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("medue", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, *([node.module] if node.module else [])])
            # `from pkg import sub` imports the module pkg.sub where there is one, else names from pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _component(name: str) -> str:
    """A layer: a subpackage (``medue.audit``) or a top-level module (``medue.evidence``)."""
    parts = name.split(".")
    return ".".join(parts[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_layers():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for target in _imports(name, path, modules):
            a, b = _component(name), _component(target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    assert _cycles(graph) == []


def test_the_layers_that_must_not_see_the_pipeline_do_not():
    modules = _modules()
    for name, path in modules.items():
        if _component(name) in ("medue.audit", "medue.io", "medue.protect", "medue.fidelity", "medue.evidence"):
            assert not {t for t in _imports(name, path, modules) if t.startswith("medue.pipeline")}, name
    assert not {t for n, p in modules.items() if n.startswith("medue.io") for t in _imports(n, p, modules)
                if t.startswith("medue.protect")}
    # storage and the process group reach the protection code through the protocols of medue.protect.minmin
    assert not {t for n, p in modules.items() if n.startswith("medue.protect") for t in _imports(n, p, modules)
                if t in ("medue.store", "medue.protector_file")}


def test_the_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_protect_opens_no_file():
    """The protection methods compute; storage (``medue.store``, ``medue.protector_file``) opens the files."""
    opening = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "mkdir", "unlink", "memmap", "savez",
               "savez_compressed", "fromfile", "tofile"}
    found = []
    for path in sorted((ROOT / "protect").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            to_buffer = bool(node.args) and isinstance(node.args[-1], ast.Name) and node.args[-1].id == "buf"
            if name in opening or (owner in ("torch", "np") and name in ("save", "load") and not to_buffer):
                found.append(f"{path.name}:{node.lineno} {owner + '.' if owner else ''}{name}")
    assert found == []
