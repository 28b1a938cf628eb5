"""Pictures of runs: what a person looks at after training."""

__all__ = ["plot_training_curves"]


def __getattr__(name: str):
    # matplotlib loads on first use: gatedssl.summary reads summaries through .runs without drawing anything
    if name == "plot_training_curves":
        from .curves import plot_training_curves

        return plot_training_curves
    raise AttributeError(f"module 'gatedssl.reporting' has no attribute {name!r}")
