"""Datasets as in-memory uint8 tensors."""

from .sources import DATASETS, DatasetSplits, ImageSet, load_dataset

__all__ = ["DATASETS", "DatasetSplits", "ImageSet", "load_dataset"]
