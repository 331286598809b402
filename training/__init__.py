"""Stream a corpus into training: the dataset, the shard-aware sampler, transforms and a reference SSL trainer.

Reads a corpus only through its public format: the Zarr store, the version's tables and manifest.
"""

from training.dataset import CorpusDataset
from training.sampler import ShardAwareSampler

__all__ = ["CorpusDataset", "ShardAwareSampler"]
