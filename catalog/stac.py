"""Scene records from STAC: a STAC API search or a static STAC file.

Credentials for a STAC API come from the environment: a bearer token in ``SPECTRAL_CORPUS_STAC_TOKEN``,
or ``SPECTRAL_CORPUS_STAC_USER`` and ``SPECTRAL_CORPUS_STAC_PASSWORD`` for basic auth, else the API
host's entry in ``~/.netrc`` (or the file named by ``NETRC``). They are only sent to the API's host and
never appear in messages, logs or records. Products behind ``http(s)://`` have credentials of their own
(``SPECTRAL_CORPUS_HTTP_*``, see ``catalog.credentials``).

How hard each request is tried (``RetryPolicy``) can be set in the environment too; a search given no
policy (as from the command line) reads:

- ``SPECTRAL_CORPUS_STAC_RETRIES``: retries after a failed try (default 4, so 5 tries in all);
- ``SPECTRAL_CORPUS_STAC_TIMEOUT``: seconds to wait for the server to answer a request (default 60);
- ``SPECTRAL_CORPUS_STAC_BACKOFF``: base of the exponential wait between tries, seconds (default 1);
- ``SPECTRAL_CORPUS_STAC_MAX_WAIT``: longest wait between tries, also when the server's ``Retry-After``
  asks for more, seconds (default 60).

The same policy governs the reads of products and their METADATA.XML (``catalog.retries``).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pystac
from pystac.utils import make_absolute_href
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.errors import ShapelyError
from shapely.geometry import mapping, shape

from spectral_corpus.catalog.bands import N_BANDS
from spectral_corpus.catalog.credentials import (
    HOW_TO_AUTHENTICATE_STAC,
    HTTP_HOSTS_ENV,
    HTTP_PASSWORD_ENV,
    HTTP_TOKEN_ENV,
    HTTP_USER_ENV,
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    CredentialAdapter,
    Credentials,
    NoAuth,
    has_userinfo,
    hide_userinfo,
    only_for_host,
    stac_credentials,
)
from spectral_corpus.catalog.errors import ProductError, SourceError, StacApiError
from spectral_corpus.catalog.hrefs import is_local, open_local, remote_url
from spectral_corpus.catalog.metadata import read_metadata
from spectral_corpus.catalog.product import ASSET_SUFFIXES, DLR_ASSET_KEYS, ProductName, asset_key, is_product_name
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.remote import RemoteFiles
from spectral_corpus.catalog.retries import (
    BACKOFF_ENV,
    MAX_WAIT_ENV,
    RETRIES_ENV,
    RETRY_STATUSES,
    TIMEOUT_ENV,
    RetryPolicy,
)
from spectral_corpus.catalog.scenes import OK, REJECTED, STAC_ITEM, SceneRecord

__all__ = [
    "BACKOFF_ENV",
    "MAX_WAIT_ENV",
    "NO_IMAGE",
    "PASSWORD_ENV",
    "RETRIES_ENV",
    "RETRY_STATUSES",
    "TIMEOUT_ENV",
    "TOKEN_ENV",
    "USER_ENV",
    "RetryPolicy",
    "read_static_stac",
    "record_from_item",
    "search_stac_api",
]

NO_IMAGE = "STAC item has no spectral image asset"


# --- items -> records ------------------------------------------------------------------------------


def record_from_item(item: Mapping[str, Any], source: str, remote: RemoteFiles | None = None) -> SceneRecord:
    """Parse a STAC item (as a dict) into a scene record; unusable items give rejected records.

    DLR's items are read as they come: numbers as strings, ``proj:epsg`` null on the item and set on
    each asset, ``eo:bands`` on the image asset, asset keys such as ``quality_cloud_shadow``. When the
    item's METADATA.XML asset is a local file (or ZIP member), or with ``remote`` one in a bucket or
    behind ``http(s)://`` (a few ranged GETs), the record is made from it exactly as for a product in a
    local archive, keeping the item's assets; without ``remote`` nothing is fetched.

    Raises SourceError for an asset href that carries credentials (``https://user:password@host/``),
    which would be kept in the scene table; ProductAccessError when a host refuses the credentials.
    """
    _refuse_credentials_in_hrefs(item)
    product = str(item.get("id", ""))
    if not is_product_name(product):
        reason = f"STAC item id {product!r} is not an EnMAP L2A product name"
        return SceneRecord.rejected(product, source, Rejection.BAD_STAC_ITEM, reason)
    try:
        record = _parse_item(item, product, source)
    except (ValueError, TypeError, KeyError, ShapelyError) as error:
        return SceneRecord.rejected(product, source, Rejection.BAD_STAC_ITEM, f"STAC item has a bad field ({error!r})")
    if "image" not in record.asset_map:
        return replace(record, status=REJECTED, rejection=Rejection.NO_IMAGE, reason=NO_IMAGE)
    metadata = record.asset_map.get("metadata")
    if metadata is not None and (is_local(metadata) or (remote is not None and remote_url(metadata) is not None)):
        return _record_from_metadata(record, metadata, remote)
    if record.wavelengths_nm and len(record.wavelengths_nm) != N_BANDS:
        reason = f"STAC item lists {len(record.wavelengths_nm)} eo:bands; operational EnMAP L2A products have {N_BANDS}"
        return replace(record, status=REJECTED, rejection=Rejection.BAND_COUNT, reason=reason)
    return record


def _record_from_metadata(record: SceneRecord, href: str, remote: RemoteFiles | None) -> SceneRecord:
    """The record made from the item's METADATA.XML, exactly as for a product in an archive."""
    try:
        with open_local(href) if is_local(href) or remote is None else remote.open(href) as stream:
            meta = read_metadata(stream, href).metadata
    except ProductError as error:
        return SceneRecord.rejected(record.product, record.source, Rejection.BAD_METADATA, str(error))
    except (OSError, zipfile.BadZipFile) as error:
        return SceneRecord.rejected(record.product, record.source, Rejection.UNREADABLE, str(error))
    return replace(
        SceneRecord.from_metadata(meta, record.product, record.source, record.asset_map), updated=record.updated
    )


def _refuse_credentials_in_hrefs(item: Mapping[str, Any]) -> None:
    """Credentials in an asset href would be stored with the scene: refuse them, saying where they go."""
    assets = item.get("assets") or {}
    hrefs = [str(a.get("href", "")) for a in assets.values() if isinstance(a, Mapping)]
    leaking = next((href for href in hrefs if has_userinfo(href)), None)
    if leaking is not None:
        raise SourceError(
            f"STAC item {str(item.get('id', ''))!r} has an asset href with credentials in it "
            f"({hide_userinfo(leaking)}); remove them from the hrefs and set {HTTP_TOKEN_ENV}, or {HTTP_USER_ENV} "
            f"and {HTTP_PASSWORD_ENV}, with {HTTP_HOSTS_ENV}, or add the host to ~/.netrc"
        )


def _parse_item(item: Mapping[str, Any], product: str, source: str) -> SceneRecord:
    name = ProductName.parse(product)
    props = item.get("properties") or {}
    assets = _our_assets(item.get("assets") or {}, product)
    image = assets.get("image", {})
    bands = image.get("eo:bands") or props.get("eo:bands") or []
    scale = _to_nanometres(bands)
    return SceneRecord(
        product=product,
        source=source,
        datatake=name.datatake,
        tile=name.tile,
        version=name.version,
        acquired=_parse_time(props["datetime"]) if props.get("datetime") else name.acquired,
        processed=name.processed,
        updated=_parse_time(props["updated"]) if props.get("updated") else None,
        epsg=_epsg(props) or _epsg(image),
        height=_shape(image)[0],
        width=_shape(image)[1],
        described_by=STAC_ITEM,
        footprint=shape(item["geometry"]) if item.get("geometry") else None,
        cloud_cover=_number(props.get("eo:cloud_cover")),
        cloud_shadow=_number(props.get("enmap:cloud_shadow")),
        snow_cover=_number(props.get("eo:snow_cover")),
        haze_cover=_number(props.get("enmap:haze_cover")),
        cirrus_cover=_number(props.get("enmap:cirrus_cover")),
        water_cover=_number(props.get("enmap:water_cover")),
        quality=_number(props.get("enmap:overallQuality")),
        wavelengths_nm=tuple(round(scale * float(b["center_wavelength"]), 6) for b in bands),
        fwhm_nm=tuple(round(scale * float(b.get("full_width_half_max", "nan")), 6) for b in bands),
        assets=tuple(sorted((key, str(asset["href"])) for key, asset in assets.items())),
    )


def _to_nanometres(bands: list[Mapping[str, Any]]) -> float:
    """The factor to nanometres: eo:bands are in micrometres, but DLR's items give nanometres (418.416)."""
    return 1.0 if bands and float(bands[0]["center_wavelength"]) > 100 else 1000.0


_FROM_DLR_KEYS = {dlr: ours for ours, dlr in DLR_ASSET_KEYS.items()}


def _our_assets(assets: Mapping[str, Mapping[str, Any]], product: str) -> dict[str, Mapping[str, Any]]:
    """Assets under our keys: named from the file, else from the asset key (ours or DLR's)."""
    ours: dict[str, Mapping[str, Any]] = {}
    for asset in assets.values():
        key = asset_key(urlsplit(str(asset.get("href", ""))).path, product)
        if key is not None:
            ours.setdefault(key, asset)
    for key, asset in assets.items():
        key = _FROM_DLR_KEYS.get(key, key)
        if key in ASSET_SUFFIXES and asset.get("href"):
            ours.setdefault(key, asset)
    return ours


def _epsg(fields: Mapping[str, Any]) -> int | None:
    """The EPSG code from ``proj:epsg`` or an ``EPSG:`` ``proj:code``; None when neither is there."""
    if fields.get("proj:epsg") is not None:
        return int(fields["proj:epsg"])
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code[5:])
    return None


def _shape(asset: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(rows, columns) from an asset's ``proj:shape``."""
    shape = asset.get("proj:shape")
    return (int(shape[0]), int(shape[1])) if shape else (None, None)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- STAC API -------------------------------------------------------------------------------------


def search_stac_api(
    url: str,
    query: SceneQuery,
    page_size: int = 100,
    *,
    server_filter: bool = True,
    policy: RetryPolicy | None = None,
    remote_metadata: bool = True,
) -> list[SceneRecord]:
    """Search a STAC API page by page and parse each item as it arrives.

    Cloud cover and quality go to the server as a CQL2 filter when it conforms to the filter extension
    (and ``server_filter``); ``query.matches`` then checks every record on the client as well.
    Without ``policy``, ``RetryPolicy.from_env()``. Items' METADATA.XML is read where it lies, also in a
    bucket or behind ``http(s)://`` unless ``remote_metadata`` is False (``record_from_item``). Raises
    StacApiError when the API refuses the credentials or keeps failing, ProductAccessError when a
    product host refuses them.
    """
    policy = policy or RetryPolicy.from_env()
    if urlsplit(url).username is not None:
        raise SourceError(f"put STAC API credentials in the environment, not in the URL: {HOW_TO_AUTHENTICATE_STAC}")
    credentials = stac_credentials(url)
    records = []
    remote = RemoteFiles(policy) if remote_metadata else None
    try:
        with _api_errors(url, policy, credentials):
            stac_io = _stac_io(url, credentials, policy)
            client = Client.open(url, stac_io=stac_io, timeout=policy.timeout_s)  # it resets stac_io's timeout
            cql2 = server_filter and client.conforms_to(ConformanceClasses.FILTER)
            temporal = cql2 and TEMPORAL_FUNCTIONS in client.get_conforms_to()
            search = client.search(**search_parameters(query, page_size, cql2=cql2, temporal=temporal))
            for item in search.items_as_dicts():
                if not _changed_since(item, query.updated_since):  # a server without filters sent it
                    continue  # skipped before its METADATA.XML is fetched
                record = record_from_item(item, url, remote)
                if query.matches(record, unknown_passes=record.status != OK):
                    records.append(record)
    finally:
        if remote is not None:
            remote.close()
    return records


def _changed_since(item: Mapping[str, Any], since: datetime | None) -> bool:
    """False for an item whose ``updated`` is before ``since``; True when either is unknown."""
    updated = (item.get("properties") or {}).get("updated")
    return since is None or not updated or _parse_time(str(updated)) >= since


#: The CQL2 conformance class of temporal operators, which ``updated_since`` needs on the server.
TEMPORAL_FUNCTIONS = "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions"


def search_parameters(query: SceneQuery, page_size: int, *, cql2: bool, temporal: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``pystac_client.Client.search``; with ``cql2``, a cql2-json filter, which with
    ``temporal`` also asks for items updated since ``query.updated_since`` (else they are skipped here)."""
    parameters: dict[str, Any] = {"collections": [query.collection], "limit": page_size}
    if query.aoi is not None:
        parameters["intersects"] = mapping(query.aoi)  # bbox, if also set, is checked on the client
    elif query.bbox is not None:
        parameters["bbox"] = list(query.bbox)
    if query.start is not None or query.end is not None:
        parameters["datetime"] = [query.start, query.end]
    terms = [
        {"op": op, "args": [{"property": name}, value]}
        for op, name, value in (
            ("<=", "eo:cloud_cover", query.max_cloud),
            ("<=", "enmap:overallQuality", query.max_quality),
        )
        if value is not None
    ]
    if temporal and query.updated_since is not None:  # updated >= since: not before it (t_before is strict)
        since = {"timestamp": query.updated_since.isoformat().replace("+00:00", "Z")}
        terms.append({"op": "not", "args": [{"op": "t_before", "args": [{"property": "updated"}, since]}]})
    if cql2 and terms:
        parameters["filter"] = terms[0] if len(terms) == 1 else {"op": "and", "args": terms}
        parameters["filter_lang"] = "cql2-json"
    return parameters


def _stac_io(url: str, credentials: Credentials, policy: RetryPolicy) -> StacApiIO:
    stac_io = StacApiIO(max_retries=None)
    adapter = CredentialAdapter(only_for_host(urlsplit(url).hostname, credentials), policy.urllib3_retry())
    stac_io.session.mount("http://", adapter)
    stac_io.session.mount("https://", adapter)
    stac_io.session.auth = NoAuth()
    return stac_io


@contextmanager
def _api_errors(url: str, policy: RetryPolicy, credentials: Credentials) -> Iterator[None]:
    """Turn pystac-client's APIError into StacApiError, with no credentials in the message."""
    try:
        yield
    except APIError as error:
        status = getattr(error, "status_code", None)
        detail = credentials.redact(str(error))
        # "from None": the APIError's own text may hold what the server echoed back.
        raise StacApiError(_error_message(url, status, detail[:500], policy, credentials), status) from None


def _error_message(url: str, status: int | None, detail: str, policy: RetryPolicy, credentials: Credentials) -> str:
    if status in (401, 403):
        return (
            f"STAC API {url} refused the credentials (HTTP {status}; sent: {credentials.origin}); "
            + HOW_TO_AUTHENTICATE_STAC
        )
    if status is None:
        return f"STAC API {url} could not be reached after {policy.attempts} attempts: {detail}"
    if status in RETRY_STATUSES:
        return f"STAC API {url} answered HTTP {status} after {policy.attempts} attempts: {detail}"
    return f"STAC API {url} answered HTTP {status}: {detail}"


# --- static STAC ----------------------------------------------------------------------------------


def read_static_stac(path: Path, query: SceneQuery, remote_metadata: bool = True) -> list[SceneRecord]:
    """Records from a saved ItemCollection, a single item, or a catalog or collection and its items.

    Relative asset hrefs are made absolute; items of another collection than the query's are skipped.
    Items' METADATA.XML is read where it lies, also in a bucket or behind ``http(s)://`` unless
    ``remote_metadata`` is False (``record_from_item``).
    """
    records = []
    remote = RemoteFiles() if remote_metadata else None
    try:
        for item in _static_items(path):
            if item.get("collection") not in (None, query.collection):
                continue
            record = record_from_item(item, str(path), remote)
            if query.matches(record, unknown_passes=record.status != OK):
                records.append(record)
    finally:
        if remote is not None:
            remote.close()
    return records


def _static_items(path: Path) -> Iterator[dict[str, Any]]:
    href = str(path.absolute())
    data = json.loads(path.read_text())
    if data.get("type") == "FeatureCollection":
        for feature in data.get("features", []):
            yield _absolute_assets(feature, href)
        return
    stac = pystac.read_dict(data, href=href)
    items = [stac] if isinstance(stac, pystac.Item) else _catalog_items(stac, path)
    for item in items:
        yield _absolute_assets(item.to_dict(transform_hrefs=False), item.get_self_href() or href)


def _catalog_items(stac: pystac.STACObject, path: Path) -> Iterator[pystac.Item]:
    if not isinstance(stac, pystac.Catalog):
        raise SourceError(f"{str(path)!r} is not a STAC item, item collection, catalog or collection")
    return stac.get_items(recursive=True)


def _absolute_assets(item: dict[str, Any], base_href: str) -> dict[str, Any]:
    assets = item.get("assets") or {}
    absolute = {
        key: {**asset, "href": make_absolute_href(str(asset["href"]), base_href)}
        for key, asset in assets.items()
        if asset.get("href")
    }
    return {**item, "assets": absolute}
