"""Pictures of runs: what a person looks at after training."""

from .curves import plot_training_curves

__all__ = ["plot_training_curves"]
