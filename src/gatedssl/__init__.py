"""gatedssl: one self-supervised pretraining run yields a dense encoder and a gated sub-network."""

__version__ = "0.2.0"


SUBPACKAGES = ("config", "data", "evaluation", "export", "losses", "methods", "models", "reporting", "training")


def __getattr__(name: str):
    # `gatedssl.load` without importing torch for `import gatedssl` (the CLI's --help stays light)
    if name == "load":
        from .export import load

        return load
    if name in SUBPACKAGES:  # `gatedssl.export.torchvision_model(...)` after a bare `import gatedssl`
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gatedssl' has no attribute {name!r}")
