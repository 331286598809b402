"""Errors raised while reading catalogs and products."""

from spectral_corpus.errors import SpectralCorpusError


class CatalogError(SpectralCorpusError):
    """Base class of catalog errors."""


class SourceError(CatalogError, ValueError):
    """A scene source, a query or a setting of theirs is not usable; the message says why."""


class ExampleError(CatalogError, ValueError):
    """The example generator cannot make what was asked; the message says why."""


class ProductError(CatalogError, ValueError):
    """A product (name, files or metadata) is malformed; the message names it and says why."""


class StacApiError(CatalogError, ConnectionError):
    """A STAC API request failed after its retries, or was refused; keeps the HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
