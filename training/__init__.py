"""Stream a corpus into training: the dataset, the shard-aware sampler, transforms and a reference SSL trainer.

Reads a corpus only through its public format: the Zarr store, the version's tables and manifest.
"""

from typing import Any

__all__ = ["CorpusDataset", "PatchLoader", "ShardAwareSampler"]


def __getattr__(name: str) -> Any:
    """Import the torch-based parts on first use, so ``training.config`` stays light."""
    if name == "CorpusDataset":
        from spectral_corpus.training.dataset import CorpusDataset

        return CorpusDataset
    if name == "PatchLoader":
        from spectral_corpus.training.loader import PatchLoader

        return PatchLoader
    if name == "ShardAwareSampler":
        from spectral_corpus.training.sampler import ShardAwareSampler

        return ShardAwareSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
