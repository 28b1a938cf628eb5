"""Layering: the CLI's help loads neither torch nor matplotlib; evaluation and export never import training."""

import subprocess
import sys


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
    from gatedssl import config
    from gatedssl.data import sources
    from gatedssl.methods import METHODS
    from gatedssl.methods.modes import MODES
    from gatedssl.models.resnet import ARCHS
    from gatedssl.precision import PRECISIONS

    choices = {f.name: f.metadata["choices"] for f in config.fields(config.PretrainConfig)}
    assert set(choices["method"]) == set(METHODS)
    assert set(choices["arch"]) == set(ARCHS)
    assert set(choices["dataset"]) == set(sources.DATASETS)
    assert set(choices["mode"]) == set(MODES)
    assert set(choices["precision"]) == set(PRECISIONS)
    assert set(choices["recipe"]) == set(config.RECIPES)
