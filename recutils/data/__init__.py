"""Datasets: registry and loaders, preprocessing into sequences, item text."""

from recutils.data.download import ChecksumError, DataNotAvailableError, data_home, fetch
from recutils.data.registry import REGISTRY, RawDataset, available, load
from recutils.data.sequences import SequenceData, prepare
from recutils.data.text import TEMPLATES, item_attributes, item_texts, readable_title

__all__ = [
    "ChecksumError", "DataNotAvailableError", "data_home", "fetch",
    "REGISTRY", "RawDataset", "available", "load",
    "SequenceData", "prepare",
    "TEMPLATES", "item_attributes", "item_texts", "readable_title",
]
