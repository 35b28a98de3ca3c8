"""``haven.api`` reaches the node daemon only through ``api/node.py``'s NodeContext: no
module under ``haven/api`` imports ``haven.daemon`` (issue 12), not even for typing or
inside a function.  The daemon may import the API (it composes the server)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import haven.api

API_DIR = Path(haven.api.__file__).parent
FORBIDDEN = "haven.daemon"
IMPORTERS = ("import_module", "__import__")


def _forbidden(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def _absolute(module: str | None, level: int, package: str) -> str:
    """The absolute module of ``from <level dots><module> import ...`` in ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[:len(parts) - level + 1]
    return ".".join([*base, module] if module else base)


def daemon_imports(source: str, package: str = "haven.api") -> list[str]:
    """Every import of ``haven.daemon`` in ``source`` (a module of ``package``), as
    ``line: module``: at top level, under ``if TYPE_CHECKING:``, in functions, relative
    (``from ..daemon import x``), ``from haven import daemon``, and
    ``importlib.import_module("haven.daemon...")``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Call) and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            fn = node.func
            called = fn.attr if isinstance(fn, ast.Attribute) else \
                fn.id if isinstance(fn, ast.Name) else ""
            if called in IMPORTERS:
                names = [node.args[0].value]
        found += [f"{node.lineno}: {n}" for n in names if _forbidden(n)][:1]
    return found


def test_no_api_module_imports_the_daemon() -> None:
    modules = sorted(p for p in API_DIR.rglob("*.py") if "ui_static" not in p.parts)
    assert len(modules) > 10  # the scan did find the API's modules
    offenders = {str(p.relative_to(API_DIR)): hits for p in modules
                 if (hits := daemon_imports(p.read_text()))}
    assert offenders == {}, "haven.api must reach the daemon through api/node.py's " \
                            "NodeContext, never by importing haven.daemon"


def test_the_scan_finds_every_way_of_importing_the_daemon() -> None:
    cases = {
        "import haven.daemon.noded": 1,
        "from haven.daemon import membership": 1,
        "from haven import daemon": 1,
        "from ..daemon import diskcopy": 1,
        "from .. import daemon": 1,
        "if TYPE_CHECKING:\n    from haven.daemon.noded import NodeDaemon": 1,
        "def f():\n    from haven.daemon import diskcopy\n    return diskcopy": 1,
        "importlib.import_module('haven.daemon.noded')": 1,
        # not the daemon
        "from haven import daemons_are_fine": 0,
        "from haven.api.node import NodeContext": 0,
        "from . import node": 0,
        "'''mentions haven.daemon in a docstring'''": 0,
    }
    for source, expected in cases.items():
        assert len(daemon_imports(source)) == expected, source


def test_importing_the_whole_api_loads_no_daemon_module() -> None:
    # A fresh interpreter: what the API pulls in when the daemon is not loaded first.
    mods = [f"haven.api.{p.stem}" for p in sorted(API_DIR.glob("*.py"))
            if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('haven.daemon')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
