"""Scene records from STAC: a STAC API search or a static STAC file.

Credentials for a STAC API come from the environment: a bearer token in ``SPECTRAL_CORPUS_STAC_TOKEN``,
or ``SPECTRAL_CORPUS_STAC_USER`` and ``SPECTRAL_CORPUS_STAC_PASSWORD`` for basic auth, else the API
host's entry in ``~/.netrc`` (or the file named by ``NETRC``). They are only sent to the API's host and
never appear in messages, logs or records.

How hard each request is tried (``RetryPolicy``) can be set in the environment too; a search given no
policy (as from the command line) reads:

- ``SPECTRAL_CORPUS_STAC_RETRIES``: retries after a failed try (default 4, so 5 tries in all);
- ``SPECTRAL_CORPUS_STAC_TIMEOUT``: seconds to wait for the server to answer a request (default 60);
- ``SPECTRAL_CORPUS_STAC_BACKOFF``: base of the exponential wait between tries, seconds (default 1);
- ``SPECTRAL_CORPUS_STAC_MAX_WAIT``: longest wait between tries, also when the server's ``Retry-After``
  asks for more, seconds (default 60).
"""

from __future__ import annotations

import base64
import json
import math
import os
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from requests.utils import get_netrc_auth
from shapely.errors import ShapelyError
from shapely.geometry import mapping, shape
from urllib3.util.retry import Retry

from spectral_corpus.catalog.bands import N_BANDS
from spectral_corpus.catalog.errors import ProductError, SourceError, StacApiError
from spectral_corpus.catalog.hrefs import is_local, open_local
from spectral_corpus.catalog.metadata import read_metadata
from spectral_corpus.catalog.product import ASSET_SUFFIXES, DLR_ASSET_KEYS, ProductName, asset_key, is_product_name
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import OK, REJECTED, STAC_ITEM, SceneRecord

TOKEN_ENV = "SPECTRAL_CORPUS_STAC_TOKEN"
USER_ENV = "SPECTRAL_CORPUS_STAC_USER"
PASSWORD_ENV = "SPECTRAL_CORPUS_STAC_PASSWORD"
RETRIES_ENV = "SPECTRAL_CORPUS_STAC_RETRIES"
TIMEOUT_ENV = "SPECTRAL_CORPUS_STAC_TIMEOUT"
BACKOFF_ENV = "SPECTRAL_CORPUS_STAC_BACKOFF"
MAX_WAIT_ENV = "SPECTRAL_CORPUS_STAC_MAX_WAIT"
#: HTTP statuses worth another try.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
NO_IMAGE = "STAC item has no spectral image asset"
_HOW_TO_AUTHENTICATE = (
    f"set {TOKEN_ENV} to a bearer token, or {USER_ENV} and {PASSWORD_ENV}, or add the host to ~/.netrc"
)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try each HTTP request.

    Retries wait ``backoff_s * 2**(n - 1)`` seconds before try n + 1 (the first retry at once), or what
    the server's ``Retry-After`` says; no wait is longer than ``max_wait_s``.
    """

    attempts: int = 5
    backoff_s: float = 1.0
    max_wait_s: float = 60.0
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The default policy with what ``SPECTRAL_CORPUS_STAC_RETRIES``, ``_TIMEOUT``, ``_BACKOFF`` and
        ``_MAX_WAIT`` set (see the module docstring); raise ValueError naming a variable that is not a
        usable number."""
        env = os.environ if environ is None else environ
        default = cls()
        retries = _env_number(env, RETRIES_ENV, default.attempts - 1, whole=True, positive=False)
        return cls(
            attempts=int(retries) + 1,
            backoff_s=_env_number(env, BACKOFF_ENV, default.backoff_s, whole=False, positive=False),
            max_wait_s=_env_number(env, MAX_WAIT_ENV, default.max_wait_s, whole=False, positive=False),
            timeout_s=_env_number(env, TIMEOUT_ENV, default.timeout_s, whole=False, positive=True),
        )


def _env_number(env: Mapping[str, str], name: str, default: float, *, whole: bool, positive: bool) -> float:
    """A number from the environment: ``default`` when unset or empty; ValueError naming ``name`` if bad."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(int(text)) if whole else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = ("a positive" if positive else "a non-negative") + (" whole" if whole else "")
        raise SourceError(f"{name}={text!r} is not {kind} number")
    return value


# --- items -> records ------------------------------------------------------------------------------


def record_from_item(item: Mapping[str, Any], source: str) -> SceneRecord:
    """Parse a STAC item (as a dict) into a scene record; unusable items give rejected records.

    DLR's items are read as they come: numbers as strings, ``proj:epsg`` null on the item and set on
    each asset, ``eo:bands`` on the image asset, asset keys such as ``quality_cloud_shadow``. When the
    item's METADATA.XML asset is a local file (or ZIP member), the record is made from it exactly as
    for a product in a local archive, keeping the item's assets.
    """
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
    if metadata is not None and is_local(metadata):
        return _record_from_metadata(record, metadata)
    if record.wavelengths_nm and len(record.wavelengths_nm) != N_BANDS:
        reason = f"STAC item lists {len(record.wavelengths_nm)} eo:bands; operational EnMAP L2A products have {N_BANDS}"
        return replace(record, status=REJECTED, rejection=Rejection.BAND_COUNT, reason=reason)
    return record


def _record_from_metadata(record: SceneRecord, href: str) -> SceneRecord:
    """The record made from the item's local METADATA.XML, exactly as for a product in an archive."""
    try:
        with open_local(href) as stream:
            meta = read_metadata(stream, href).metadata
    except ProductError as error:
        return SceneRecord.rejected(record.product, record.source, Rejection.BAD_METADATA, str(error))
    except (OSError, zipfile.BadZipFile) as error:
        return SceneRecord.rejected(record.product, record.source, Rejection.UNREADABLE, str(error))
    return SceneRecord.from_metadata(meta, record.product, record.source, record.asset_map)


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
) -> list[SceneRecord]:
    """Search a STAC API page by page and parse each item as it arrives.

    Cloud cover and quality go to the server as a CQL2 filter when it conforms to the filter extension
    (and ``server_filter``); ``query.matches`` then checks every record on the client as well.
    Without ``policy``, ``RetryPolicy.from_env()``. Raises StacApiError when the API refuses the
    credentials or keeps failing.
    """
    policy = policy or RetryPolicy.from_env()
    if urlsplit(url).username is not None:
        raise SourceError(f"put STAC API credentials in the environment, not in the URL: {_HOW_TO_AUTHENTICATE}")
    credentials = _credentials(url)
    records = []
    with _api_errors(url, policy, credentials):
        stac_io = _stac_io(url, credentials.auth, policy)
        client = Client.open(url, stac_io=stac_io, timeout=policy.timeout_s)  # it resets stac_io's timeout
        cql2 = server_filter and client.conforms_to(ConformanceClasses.FILTER)
        search = client.search(**_search_parameters(query, page_size, cql2=cql2))
        for item in search.items_as_dicts():
            record = record_from_item(item, url)
            if query.matches(record, unknown_passes=record.status != OK):
                records.append(record)
    return records


def _search_parameters(query: SceneQuery, page_size: int, *, cql2: bool) -> dict[str, Any]:
    """Keyword arguments for ``pystac_client.Client.search``; with ``cql2``, a cql2-json filter."""
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
    if cql2 and terms:
        parameters["filter"] = terms[0] if len(terms) == 1 else {"op": "and", "args": terms}
        parameters["filter_lang"] = "cql2-json"
    return parameters


@dataclass(frozen=True)
class _Credentials:
    """What to authenticate with, where it came from, and the strings to keep out of messages."""

    auth: AuthBase | None = None
    origin: str = "none"
    secrets: tuple[str, ...] = ()


def _credentials(url: str) -> _Credentials:
    """Credentials for the API from the environment, else from netrc."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return _Credentials(_BearerAuth(token), f"a bearer token from {TOKEN_ENV}", (token,))
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if bool(user) != bool(password):
        raise SourceError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
    if user and password:
        return _basic(user, password, f"user and password from {USER_ENV} and {PASSWORD_ENV}")
    netrc = get_netrc_auth(url)
    return _basic(*netrc, "user and password from netrc") if netrc else _Credentials()


def _basic(user: str, password: str, origin: str) -> _Credentials:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return _Credentials(HTTPBasicAuth(user, password), origin, tuple(s for s in (password, encoded) if s))


class _BearerAuth(AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class _NoAuth(AuthBase):
    """Session auth placeholder: keeps requests from adding netrc credentials while preparing."""

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        return request


class _CredentialAdapter(HTTPAdapter):
    """Adds credentials to requests for one host just before they are sent.

    pystac-client logs each prepared request with its headers at DEBUG level; credentials added here
    never show there, and never go to another host (a redirect or a ``next`` link elsewhere).
    """

    def __init__(self, auth: AuthBase | None, host: str | None, retry: Retry) -> None:
        super().__init__(max_retries=retry)
        self._auth = auth
        self._host = host

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        if self._auth is not None and urlsplit(request.url or "").hostname == self._host:
            request = self._auth(request)
        return super().send(request, *args, **kwargs)


class _CappedRetry(Retry):
    """urllib3 Retry that waits no longer than ``backoff_max``, also when told so by Retry-After."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), self.backoff_max)


def _stac_io(url: str, auth: AuthBase | None, policy: RetryPolicy) -> StacApiIO:
    retry = _CappedRetry(
        total=policy.attempts - 1,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # search is a POST, and safe to repeat
        backoff_factor=policy.backoff_s,
        backoff_max=policy.max_wait_s,
        raise_on_status=False,  # hand the last answer to pystac-client, which keeps its status
    )
    stac_io = StacApiIO(max_retries=None)
    adapter = _CredentialAdapter(auth, urlsplit(url).hostname, retry)
    stac_io.session.mount("http://", adapter)
    stac_io.session.mount("https://", adapter)
    stac_io.session.auth = _NoAuth()
    return stac_io


@contextmanager
def _api_errors(url: str, policy: RetryPolicy, credentials: _Credentials) -> Iterator[None]:
    """Turn pystac-client's APIError into StacApiError, with no credentials in the message."""
    try:
        yield
    except APIError as error:
        status = getattr(error, "status_code", None)
        detail = str(error)
        for secret in credentials.secrets:
            detail = detail.replace(secret, "***")
        # "from None": the APIError's own text may hold what the server echoed back.
        raise StacApiError(_error_message(url, status, detail[:500], policy, credentials), status) from None


def _error_message(url: str, status: int | None, detail: str, policy: RetryPolicy, credentials: _Credentials) -> str:
    if status in (401, 403):
        return (
            f"STAC API {url} refused the credentials (HTTP {status}; sent: {credentials.origin}); "
            + _HOW_TO_AUTHENTICATE
        )
    if status is None:
        return f"STAC API {url} could not be reached after {policy.attempts} attempts: {detail}"
    if status in RETRY_STATUSES:
        return f"STAC API {url} answered HTTP {status} after {policy.attempts} attempts: {detail}"
    return f"STAC API {url} answered HTTP {status}: {detail}"


# --- static STAC ----------------------------------------------------------------------------------


def read_static_stac(path: Path, query: SceneQuery) -> list[SceneRecord]:
    """Records from a saved ItemCollection, a single item, or a catalog or collection and its items.

    Relative asset hrefs are made absolute; items of another collection than the query's are skipped.
    """
    records = []
    for item in _static_items(path):
        if item.get("collection") not in (None, query.collection):
            continue
        record = record_from_item(item, str(path))
        if query.matches(record, unknown_passes=record.status != OK):
            records.append(record)
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
