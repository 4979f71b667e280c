"""protocol/ stays sans-IO: no networking or async frameworks, no clock reads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import protocol

PROTOCOL_DIR = Path(protocol.__file__).parent
FORBIDDEN_MODULES = {"trio", "libp2p", "socket", "asyncio", "time", "selectors", "ssl"}
FORBIDDEN_CALLS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("time", "time_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
}


def _modules() -> list[Path]:
    return sorted(p for p in PROTOCOL_DIR.rglob("*.py"))


def test_sources_do_not_import_io_or_read_clocks() -> None:
    problems = []
    for path in _modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    problems.append(f"{path.name}:{getattr(node, 'lineno', 0)} imports {name}")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in FORBIDDEN_CALLS
            ):
                where = f"{path.name}:{getattr(node, 'lineno', 0)}"
                problems.append(f"{where} uses {node.value.id}.{node.attr}")
    assert not problems, problems
    assert len(_modules()) >= 7


def test_importing_protocol_loads_no_io_framework() -> None:
    names = ["protocol." + p.stem for p in _modules() if p.stem not in ("__init__", "__main__")]
    code = (
        f"import sys\nfor n in {names!r}: __import__(n)\n"
        "bad = [m for m in ('trio', 'libp2p', 'socket', 'asyncio') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
