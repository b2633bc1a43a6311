"""The import contract: which package may import which, no import cycles, small modules.

Each package's docstring states its rule in words; this file keeps them true. Imports are read
from the source (``ast``), lazy ones inside functions included; only imports under
``if TYPE_CHECKING:`` are left out (they never run).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import persona_explorer

ROOT = Path(persona_explorer.__file__).resolve().parent
PKG = "persona_explorer"
MAX_LINES = 600
MAX_TOP_LEVEL_MODULES = 6

# What each domain package may import of this project (itself always). Read bottom-up: core is
# the floor; axis, evaluate and training are siblings that never import each other.
LOWER = {
    "core": set(),
    "engine": {"core"},
    "steering": {"core", "engine"},
    "vectors": {"core"},  # never loads a model
    "plots": {"core"},  # plotly and numbers
    "personas": {"core", "engine", "steering", "vectors"},
    "axis": {"core", "engine", "steering", "vectors", "personas"},
    "evaluate": {"core", "engine", "steering", "vectors", "personas"},
    "training": {"core", "engine", "steering", "vectors", "personas"},
}
EDGES = {"ui", "cli", "dev"}  # the app, the command line, development tools
ALL_DOMAIN = set(LOWER)
ALLOWED = {
    **{name: deps | {name} for name, deps in LOWER.items()},
    "ui": ALL_DOMAIN | {"ui"},
    "cli": ALL_DOMAIN | {"cli", "dev"},  # `bench` forwards to dev.bench
    "dev": ALL_DOMAIN | {"dev", "ui", "cli"},
}
# The third-party packages a layer may not use, beyond the project rules above.
CORE_THIRD_PARTY = {"platformdirs"}  # the user's data and cache folders, per OS


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), TYPE_CHECKING blocks left out."""
    is_package = path.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                # ``from pkg import module`` imports the module; ``from pkg import name`` the
                # package (a submodule's import runs its package's __init__ either way, so
                # that edge alone is no circle).
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _is_module(candidate) else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _is_module(name: str) -> bool:
    if not name.startswith(PKG + "."):
        return False
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _own(name: str) -> str | None:
    """The project module an import names (the longest prefix that is a module)."""
    parts = name.split(".")
    for end in range(len(parts), 1, -1):
        if _is_module(".".join(parts[:end])):
            return ".".join(parts[:end])
    return PKG if parts[0] == PKG else None


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


GRAPH = {
    module: {own for name in imports(module, path) if (own := _own(name)) and own != module}
    for module, path in modules()
}


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, deps in GRAPH.items():
        layer = _layer(module)
        if layer not in ALLOWED:
            continue  # the package's own __init__ and __main__
        for dep in deps:
            target = _layer(dep)
            if dep == PKG or target not in ALLOWED[layer]:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over the module graph (lazy imports count)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                connect(w)
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
            # A package's __init__ importing its own modules is not a circle unless they import
            # the package back; that shows up as a component of two or more all the same.
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            connect(v)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_is_long() -> None:
    long = {
        str(path.relative_to(ROOT.parent)): n
        for _, path in modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_top_level_is_small() -> None:
    top = {p.name for p in ROOT.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)


def test_core_uses_the_standard_library_only() -> None:
    stdlib = set(sys.stdlib_module_names)
    wrong = []
    for module, path in modules():
        if _layer(module) != "core":
            continue
        for name in imports(module, path):
            top = name.split(".")[0]
            if top not in stdlib and top != PKG and top not in CORE_THIRD_PARTY:
                wrong.append(f"{module} imports {name}")
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("gradio", {"core", "engine", "steering", "vectors", "personas", "axis", "evaluate"}),
        ("gradio", {"training", "plots", "cli"}),
        ("transformers", {"core", "vectors", "plots"}),
        ("transformer_lens", {"core", "vectors", "plots"}),
        ("torch", {"core", "plots"}),
    ],
)
def test_libraries_stay_in_their_layers(package: str, forbidden: set[str]) -> None:
    wrong = [
        module
        for module, path in modules()
        if _layer(module) in forbidden
        and any(n == package or n.startswith(package + ".") for n in imports(module, path))
    ]
    assert not wrong, f"{package} imported by {wrong}"


UI = ROOT / "ui"
TABS = sorted(p.name for p in UI.iterdir() if (p / "__init__.py").is_file() and p.name != "shared")


def test_ui_has_one_package_per_tab() -> None:
    assert not [p.name for p in UI.glob("*.py") if p.name != "__init__.py"]
    assert {"steer", "extract", "library", "sweep", "screening", "finetune", "drift"} <= set(TABS)


@pytest.mark.parametrize("tab", TABS)
def test_a_tab_never_imports_another_tab(tab: str) -> None:
    mine = f"{PKG}.ui.{tab}"
    wrong = [
        f"{module} -> {dep}"
        for module, deps in GRAPH.items()
        if module == mine or module.startswith(mine + ".")
        for dep in deps
        if dep.startswith(f"{PKG}.ui.")
        and not dep.startswith(f"{PKG}.ui.shared")
        and not (dep == mine or dep.startswith(mine + "."))
    ]
    assert not wrong, wrong
    shared = [
        f"{module} -> {dep}"
        for module, deps in GRAPH.items()
        if module.startswith(f"{PKG}.ui.shared")
        for dep in deps
        if dep.startswith(f"{PKG}.ui.") and not dep.startswith(f"{PKG}.ui.shared")
    ]
    assert not shared, f"ui/shared imports a tab: {shared}"


@pytest.mark.parametrize("tab", TABS)
def test_handlers_never_import_the_layout(tab: str) -> None:
    """A tab's ``tab`` module lays it out and wires events; nothing else in the tab imports it
    (not even for types: the widgets' dataclass lives in ``components``)."""
    layout = f"{PKG}.ui.{tab}.tab"
    users = []
    for module, path in modules():
        if not module.startswith(f"{PKG}.ui.{tab}.") or module == layout:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == layout:
                users.append(module)
    assert not users, users


def test_every_package_says_what_it_owns_and_may_import() -> None:
    missing = []
    for module, path in modules():
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "Imports:" not in doc and "import" not in doc.lower():
            missing.append(module)
    assert not missing, missing


def test_the_python_api_is_reexported_lazily() -> None:
    import subprocess

    code = (
        "import sys, persona_explorer as pe; "
        "assert 'torch' not in sys.modules and 'gradio' not in sys.modules; "
        "print(sorted(pe.__all__) == sorted(pe._WHERE))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    for name in persona_explorer.__all__:
        value = getattr(persona_explorer, name)
        module = getattr(value, "__module__", "")
        assert module.startswith(PKG + "."), (name, module)
    with pytest.raises(AttributeError):
        persona_explorer.no_such_name  # noqa: B018


def test_the_residual_stream_is_edited_in_one_place() -> None:
    """Hooks that change activations live in ``steering`` (and the engine's own callback
    plumbing); ``dev`` keeps the persona_vectors-style hook it benchmarks against."""
    allowed = {"steering", "engine", "dev"}
    pattern = ("register_forward_hook", ".hooks(", "add_hook(", "run_with_hooks(")
    wrong = [
        module
        for module, path in modules()
        if _layer(module) not in allowed and any(p in path.read_text() for p in pattern)
    ]
    assert not wrong, wrong
