"""Validate STAC items and collections against the official JSON schemas kept in ``tests/data/stac-schemas``.

Every ``$ref`` (an absolute URL once resolved) is read from that folder, which mirrors the canonical
URLs (``https://host/path`` -> ``stac-schemas/host/path``); nothing is ever fetched from the network.
Formats (``date-time``, ``iri``) are annotations only, as in pystac's validator; patterns still apply.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urldefrag, urlsplit

import jsonschema
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SCHEMAS = Path(__file__).resolve().parent / "data" / "stac-schemas"
_CORE = "https://schemas.stacspec.org/v{version}/{kind}-spec/json-schema/{kind}.json"


class StacError(NamedTuple):
    """One schema violation: the schema it breaks, where in the document, and jsonschema's message."""

    schema: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.schema}: {self.path}: {self.message}"


def local_schema_path(url: str) -> Path:
    """The file kept for schema ``url``; LookupError naming the URL when it is not kept."""
    parts = urlsplit(urldefrag(url).url)
    path = SCHEMAS / parts.netloc / parts.path.lstrip("/")
    if parts.scheme not in ("http", "https") or not parts.netloc or not path.is_file():
        raise LookupError(f"JSON schema {url!r} is not kept in {SCHEMAS} (no network access in tests)")
    return path


def _retrieve(url: str) -> Resource[Any]:
    return Resource.from_contents(json.loads(local_schema_path(url).read_bytes()), default_specification=DRAFT7)


_REGISTRY: Registry[Any] = Registry(retrieve=_retrieve)  # type: ignore[call-arg]  # attrs alias of _retrieve


@cache
def _validator(url: str) -> jsonschema.protocols.Validator:
    local_schema_path(url)  # fail early, naming the URL
    return jsonschema.Draft7Validator({"$ref": url}, registry=_REGISTRY)


def offline_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A draft-7 validator of ``schema`` whose ``$ref``s resolve to the files kept here (PROJJSON, ...)."""
    return jsonschema.Draft7Validator(schema, registry=_REGISTRY)


def _leaves(error: ValidationError) -> list[ValidationError]:
    """The innermost errors; for a failed ``oneOf``/``anyOf``, those of the branch that got deepest into the data."""
    if not error.context:
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    branch = max(branches.values(), key=lambda subs: max(len(sub.absolute_path) for sub in subs))
    return [leaf for sub in branch for leaf in _leaves(sub)]


def stac_errors(document: dict[str, Any], kind: str = "item") -> list[StacError]:
    """All violations of ``document`` (a STAC ``item`` or ``collection``) of its core schema and extension schemas."""
    core = _CORE.format(version=document.get("stac_version", "?"), kind=kind)
    return [
        StacError(url, leaf.json_path, leaf.message)
        for url in [core, *document.get("stac_extensions", [])]
        for error in _validator(url).iter_errors(document)
        for leaf in _leaves(error)
    ]


def _raise(errors: list[StacError]) -> None:
    if errors:
        raise ValidationError(f"{len(errors)} STAC schema violation(s):\n" + "\n".join(map(str, errors)))


def validate_stac_item(item: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` listing every violation (schema URL, JSON path, message) of ``item``."""
    _raise(stac_errors(item, "item"))


def validate_stac_collection(collection: dict[str, Any]) -> None:
    """As ``validate_stac_item``, for a STAC collection."""
    _raise(stac_errors(collection, "collection"))
