"""Errors raised while reading catalogs and products."""


class CatalogError(Exception):
    """Base class of catalog errors."""


class ProductError(CatalogError, ValueError):
    """A product (name, files or metadata) is malformed; the message names it and says why."""


class StacApiError(CatalogError, ConnectionError):
    """A STAC API request failed after its retries, or was refused; keeps the HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
