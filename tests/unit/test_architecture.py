"""The layering the README describes, checked on the source so it cannot drift."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import rtransfer

PACKAGE = Path(rtransfer.__file__).parent
PROTOCOL = sorted((PACKAGE / "protocol").glob("*.py"))
SESSION = sorted((PACKAGE / "session").glob("*.py"))
MAX_FUNCTION_LINES = 40
CODEC = {"rtransfer.protocol.messages", "rtransfer.protocol.writing", "rtransfer.protocol.reading"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, wherever the import sits (TYPE_CHECKING blocks and functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_protocol_imports_nothing_of_rtransfer_outside_itself() -> None:
    assert PROTOCOL
    for path in PROTOCOL:
        outside = {
            m for m in imported_modules(path) if m.startswith("rtransfer") and not m.startswith("rtransfer.protocol")
        }
        assert not outside, f"{path.name} imports {outside}"


def test_the_protocol_never_speaks_of_exit_codes() -> None:
    """Exit codes are what the user sees; session/outcome.py maps protocol errors to them."""
    for path in PROTOCOL:
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        names = {t.string for t in tokens if t.type == tokenize.NAME}
        assert not [n for n in names if "exit" in n.lower()], path.name


def test_every_function_is_short() -> None:
    """The body, from its docstring on: a typer command's signature is its list of options."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.body[0].lineno + 1
                assert lines <= MAX_FUNCTION_LINES, f"{path.relative_to(PACKAGE)}: {node.name} is {lines} lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle_not_even_for_type_checking() -> None:
    """A circle makes the order of imports matter and the layers meaningless; TYPE_CHECKING imports count."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {m for m in imported_modules(path) if m in modules and m != name and not name.startswith(m + ".")}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_session_functions_share_no_state_through_closures() -> None:
    assert SESSION
    for path in SESSION:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Nonlocal | ast.Global):
                raise AssertionError(f"{path.name}:{node.lineno}: {type(node).__name__.lower()} state")
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            inner = [
                n
                for n in ast.walk(node)
                if n is not node and isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            ]
            assert not inner, f"{path.name}: {node.name} defines a closure at line {inner[0].lineno}"


def test_the_file_side_uses_the_model_without_the_wire_codec() -> None:
    """Walking, hashing and writing files need to know what an entry is, not how a frame is encoded."""
    for name in (
        "sending/walk.py",
        "sending/packs.py",
        "integrity.py",
        "receiving/direct_io.py",
        "stats.py",
        "receiving/sink.py",
        "receiving/landing.py",
        "receiving/plan.py",
        "receiving/write.py",
        "receiving/finish.py",
        "receiving/journal.py",
        "receiving/dest.py",
        "receiving/packs.py",
    ):
        codec = {m for m in imported_modules(PACKAGE / name) if m in CODEC}
        assert not codec, f"{name} imports the codec"


def test_the_package_imports_only_what_it_declares() -> None:
    """``pip install .`` on a fresh machine installs the declared dependencies and nothing else: an
    import of another package (click, which typer 0.28 no longer brings) works here only because
    the tests installed it. An import guarded by ``except ImportError`` is a fallback, not a need."""
    import re
    import sys
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("-", "_") for d in project["dependencies"]}
    needed: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        guarded = {
            id(node)
            for handler_owner in ast.walk(tree)
            if isinstance(handler_owner, ast.Try)
            and any("ImportError" in ast.unparse(h.type or ast.Name("")) for h in handler_owner.handlers)
            for part in (handler_owner.body, *(h.body for h in handler_owner.handlers))
            for stmt in part
            for node in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                needed.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                needed.add(node.module.split(".")[0])
    distribution = {"re2": "google_re2"}  # a module whose distribution has another name
    third_party = {distribution.get(m, m) for m in needed if m not in sys.stdlib_module_names and m != "rtransfer"}
    assert third_party <= declared, f"imported but not declared in pyproject.toml: {third_party - declared}"


# The layers docs/architecture.md draws, bottom to top: a module imports only from its own layer or
# those below (and the two rooms of the data's way never from each other).
LAYERS = ["protocol", "shared", "sending receiving", "transport", "session", "cli"]
ROOMS = ("sending", "receiving")


def layer_of(module: str) -> int:
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else ""
    for number, names in enumerate(LAYERS):
        if room in names.split():
            return number
    return 5 if room == "__main__" else 1  # any other top-level module is shared


def test_the_layer_order_the_architecture_states_is_held() -> None:
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    assert "protocol → shared → sending, receiving → transport → session → cli" in doc
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        for imported in imported_modules(path):
            if not imported.startswith("rtransfer.") or imported.startswith(module + "."):
                continue
            assert layer_of(imported) <= layer_of(module), f"{module} imports {imported}, from a higher layer"
            rooms = {module.split(".")[1], imported.split(".")[1]}
            assert rooms != set(ROOMS), f"{module} imports {imported}: the sending and receiving rooms stay apart"


def test_the_top_level_holds_at_most_fifteen_files() -> None:
    assert len(list(PACKAGE.glob("*.py"))) <= 15


WAYS = {"Way", "Dial", "Listen", "Relay", "Ssh", "StdioLink", "DirectPath"}


def test_outside_transport_nothing_asks_which_way_to_the_peer_it_has() -> None:
    """The way to the peer is one value (transport.Way): what differs between ways is asked of it,
    never read off its type or its route (a comparison of a route, or of a path with its names)."""
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "transport":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                assert not named & WAYS, f"{path.name}:{node.lineno}: isinstance on a way to the peer"
            if isinstance(node, ast.Compare):
                for side in (node.left, *node.comparators):
                    text = ast.unparse(side)
                    assert "Route." not in text and not text.endswith(".route"), f"{path.name}:{node.lineno}"
                    assert not (isinstance(side, ast.Constant) and side.value in ("relay", "ssh")), (
                        f"{path.name}:{node.lineno}: a route compared by its name"
                    )
