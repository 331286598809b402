"""Errors raised while training."""

from spectral_corpus.errors import SpectralCorpusError


class TrainingError(SpectralCorpusError):
    """Base class of training errors."""


class CorruptShardError(TrainingError, OSError):
    """A shard file of the corpus fails its checksum; the message names the file."""


class TrainConfigError(TrainingError, ValueError):
    """A training setting (method, backbone, device, sizes) cannot be used; the message says which."""
