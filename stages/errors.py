"""Errors raised by the stages."""

from spectral_corpus.errors import SpectralCorpusError


class StageError(SpectralCorpusError):
    """Base class of stage errors."""


class GridError(StageError, ValueError):
    """A raster does not sit on the EnMAP 30 m lattice in a UTM zone."""


class RulesError(StageError, ValueError):
    """Corpus rules or split settings that cannot be used; the message names them."""
