"""Datasets as uint8 images: held in memory, or streamed from image folders too large for it."""

from .sources import DATASETS, STORAGES, DatasetSplits, ImageSet, load_dataset
from .streaming import ImageFiles, read_batches

__all__ = ["DATASETS", "STORAGES", "DatasetSplits", "ImageFiles", "ImageSet", "load_dataset", "read_batches"]
