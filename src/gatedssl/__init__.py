"""gatedssl: one self-supervised pretraining run yields a dense encoder and a gated sub-network."""

__version__ = "0.1.0"
