"""Layering: the CLI's help loads neither torch nor matplotlib; evaluation and export never import training;
reports load no torch; no module imports itself through others."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def _loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)), file=sys.stderr)"  # stdout holds the help text
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stderr.split())


def test_help_imports_neither_torch_nor_matplotlib():
    loaded = _loaded_after("from gatedssl.cli import main\ntry:\n    main(['pretrain', '--help'])\nexcept SystemExit:\n    pass")
    assert "gatedssl.cli" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "matplotlib")}


def test_evaluation_and_export_do_not_import_training():
    loaded = _loaded_after("import gatedssl.evaluation.runs, gatedssl.export.run, gatedssl.export.encoder")
    assert "gatedssl.evaluation.runs" in loaded and "gatedssl.export.run" in loaded
    assert not {m for m in loaded if m.startswith("gatedssl.training")}


def test_config_choices_are_the_registries_names():
    """config.py keeps torch-free name lists for --help; they must name what the registries hold."""
    from dataclasses import fields

    from gatedssl import config
    from gatedssl.data import sources
    from gatedssl.methods import METHODS
    from gatedssl.methods.modes import MODES
    from gatedssl.models.backbone import ARCHS, create_backbone

    create_backbone("resnet18", width=8)  # the families register on first use
    from gatedssl.precision import PRECISIONS

    choices = {f.name: f.metadata["choices"] for f in fields(config.PretrainConfig)}
    assert set(choices["method"]) == set(METHODS)
    assert set(choices["arch"]) == set(ARCHS)
    assert set(choices["dataset"]) == set(sources.DATASETS)
    assert set(choices["mode"]) == set(MODES)
    assert set(choices["precision"]) == set(PRECISIONS)
    assert set(choices["recipe"]) == set(config.RECIPES)


def test_reports_load_no_torch_and_reading_summaries_draws_nothing():
    assert not {m for m in _loaded_after("import gatedssl.reporting.report") if m.split(".")[0] == "torch"}
    assert not {m for m in _loaded_after("import gatedssl.reporting.runs") if m.split(".")[0] in ("torch", "matplotlib")}


def test_the_reports_mode_facts_are_the_mode_table():
    """reporting.runs keeps torch-free copies of what methods.modes knows about each mode (importing it loads torch)."""
    from gatedssl.methods.modes import MODES
    from gatedssl.reporting import runs

    assert runs.SYSTEM_LABEL == {m.name: m.label for m in MODES.values()}
    assert set(runs.GATED_MODES) == {m.name for m in MODES.values() if m.budget}
    assert set(runs.MODE_LABEL) == set(MODES)


SRC = Path(__file__).resolve().parents[1] / "src"


def _run_on_import(body: list[ast.stmt]):
    """The import statements a module runs when it is imported: not those inside functions, nor under `if TYPE_CHECKING`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                yield from _run_on_import(node.body)
            yield from _run_on_import(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _run_on_import(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _run_on_import(node.body)


def _import_graph() -> dict[str, set[str]]:
    """Each gatedssl module -> the gatedssl modules it imports at import time (`from . import x` names module x)."""
    files = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p for p in (SRC / "gatedssl").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _run_on_import(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_import_cycles():
    graph = _import_graph()
    assert {"gatedssl.reporting.compare", "gatedssl.reporting.runs"} <= graph["gatedssl.reporting.report"]  # the walk resolves
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in path:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep) :] + [dep]))
            if dep not in done:
                visit(dep, path + [dep])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
