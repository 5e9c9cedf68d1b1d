"""The architecture holds: import-linter's contracts (.importlinter), and no import cycle among the jobs modules."""
import subprocess
import sys
from pathlib import Path

import grimp

BASE_DIR = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=BASE_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def import_cycles(graph, package: str) -> list[list[str]]:
    """Every cycle of imports among the package's modules, imports inside functions included."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    edges = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d in modules) for m in modules}
    cycles, state, path = [], {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for imported in edges[module]:
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = "done"

    for module in modules:
        if module not in state:
            visit(module)
    return cycles


def test_no_module_of_jobs_is_part_of_an_import_cycle():
    assert import_cycles(grimp.build_graph("jobs"), "jobs") == []


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "__init__.py").write_text("")
    (tmp_path / "loop" / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "loop" / "b.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(grimp.build_graph("loop"), "loop") == [["loop.a", "loop.b", "loop.a"]]
