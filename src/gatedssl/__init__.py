"""gatedssl: one self-supervised pretraining run yields a dense encoder and a gated sub-network."""

__version__ = "0.2.0"


def __getattr__(name: str):
    # `gatedssl.load` without importing torch for `import gatedssl` (the CLI's --help stays light)
    if name == "load":
        from .export import load

        return load
    raise AttributeError(f"module 'gatedssl' has no attribute {name!r}")
