"""Errors raised while reading catalogs and products."""

from __future__ import annotations

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


class ProductAccessError(SourceError):
    """A product host refused the credentials (HTTP 401 or 403): the whole run stops, not one scene.

    The message names the host and where the credentials sent came from, never the secret; ``host``
    and ``status`` keep them for callers.
    """

    def __init__(self, message: str, host: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.status = status

    def __reduce__(self) -> tuple[type[ProductAccessError], tuple[str, str | None, int | None]]:
        return type(self), (str(self), self.host, self.status)  # a Dask worker's error reaches the client whole
