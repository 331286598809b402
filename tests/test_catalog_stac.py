"""STAC sources: items to records, static STAC files, a live stac-fastapi-pgstac API, retries and auth."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pystac
import pytest
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import box

from fault_proxy import send_reply
from spectral_corpus.catalog.errors import StacApiError
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.scenes import OK, REJECTED, SceneRecord
from spectral_corpus.catalog.sources import find_scenes
from spectral_corpus.catalog.stac import (
    NO_IMAGE,
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    RetryPolicy,
    read_static_stac,
    record_from_item,
    search_stac_api,
)
from stac_server import StacServer

COLLECTION = "ENMAP_HSI_L2A"
N_ITEMS = 12
FAST = RetryPolicy(attempts=3, backoff_s=0.0, max_wait_s=0.01, timeout_s=5.0)


def product(i: int, version: str = "010302") -> str:
    """Product i: datatake 1000 + i, acquired 2024-(i%12+1)-15 10:30:00."""
    return f"ENMAP01-____L2A-DT{1000 + i:010d}_2024{i % 12 + 1:02d}15T103000Z_001_V{version}_20241120T000000Z"


def make_item(i: int, *, version: str = "010302", image: bool = True, metadata: bool = False) -> dict[str, Any]:
    """Item i: lon 10+2i..11+2i, lat 45..46, cloud 7i %, quality i % 3; CRS as proj:epsg, proj:code or none.

    With ``metadata``, a METADATA.XML asset on a host that does not exist: a search or a static file would
    try to read it (record_from_item alone does not), so only the tests of parsing ask for it.
    """
    name = product(i, version)
    west = 10.0 + 2 * i
    ring = [[west, 45.0], [west + 1, 45.0], [west + 1, 46.0], [west, 46.0], [west, 45.0]]
    crs_fields: list[dict[str, Any]] = [{"proj:epsg": 32632}, {"proj:code": "EPSG:32633"}, {}]
    assets = {
        "thumbnail": {"href": f"https://example.invalid/{name}-QUICKLOOK.png"},
        "ql_cloud": {"href": f"https://example.invalid/{name}/{name}-QL_QUALITY_CLOUD.TIF?sig=abc"},
    }
    if metadata:
        assets["metadata"] = {"href": f"https://example.invalid/{name}/{name}-METADATA.XML"}
    if image:
        assets["spectral_image"] = {"href": f"https://example.invalid/{name}/{name}-SPECTRAL_IMAGE_COG.TIF"}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": name,
        "collection": COLLECTION,
        "bbox": [west, 45.0, west + 1, 46.0],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "datetime": f"2024-{i % 12 + 1:02d}-15T10:30:07.5Z",
            "eo:cloud_cover": 7.0 * i,
            "eo:snow_cover": 0.5,
            "enmap:overallQuality": i % 3,
            **crs_fields[i % 3],
        },
        "assets": assets,
        "links": [],
    }


def make_collection() -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": COLLECTION,
        "description": "EnMAP HSI L2A (test)",
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[10.0, 45.0, 34.0, 46.0]]},
            "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
        },
    }


def datatakes(records: list[SceneRecord]) -> list[int]:
    return sorted(r.datatake - 1000 for r in records if r.datatake is not None)


# --- record_from_item ------------------------------------------------------------------------------


def test_record_from_item_reads_every_field() -> None:
    record = record_from_item(make_item(0, metadata=True), "https://stac.example/api")
    name = product(0)

    assert (record.status, record.reason, record.product) == (OK, "", name)
    assert (record.datatake, record.tile, record.version, record.epsg) == (1000, 1, "010302", 32632)
    assert record.acquired is not None and record.acquired.isoformat() == "2024-01-15T10:30:07.500000+00:00"
    assert record.processed is not None and record.processed.isoformat() == "2024-11-20T00:00:00+00:00"
    assert (record.cloud_cover, record.snow_cover, record.quality) == (0.0, 0.5, 0.0)
    assert record.footprint is not None and record.footprint.bounds == (10.0, 45.0, 11.0, 46.0)
    assert record.source == "https://stac.example/api"
    assert record.asset_map == {
        "image": f"https://example.invalid/{name}/{name}-SPECTRAL_IMAGE_COG.TIF",
        "metadata": f"https://example.invalid/{name}/{name}-METADATA.XML",
        "quality_cloud": f"https://example.invalid/{name}/{name}-QL_QUALITY_CLOUD.TIF?sig=abc",
    }


def test_record_from_item_crs_from_proj_epsg_proj_code_or_none() -> None:
    assert [record_from_item(make_item(i), "s").epsg for i in range(3)] == [32632, 32633, None]
    item = make_item(2)
    item["assets"]["spectral_image"]["proj:code"] = "EPSG:32634"
    assert record_from_item(item, "s").epsg == 32634
    item["properties"]["proj:code"] = "IAU_2015:30100"
    assert record_from_item(item, "s").epsg == 32634


def test_asset_keys_named_like_ours_pass_through() -> None:
    item = make_item(0, image=False)
    item["assets"]["image"] = {"href": "s3://bucket/scene.tif"}
    assert record_from_item(item, "s").asset_map["image"] == "s3://bucket/scene.tif"


def test_item_without_image_is_rejected_but_keeps_what_it_says() -> None:
    record = record_from_item(make_item(4, image=False), "s")

    assert (record.status, record.reason) == (REJECTED, NO_IMAGE)
    assert NO_IMAGE == "STAC item has no spectral image asset"
    assert (record.datatake, record.cloud_cover) == (1004, 28.0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": "S2A_MSIL2A_20240115"}, "STAC item id 'S2A_MSIL2A_20240115' is not an EnMAP L2A product name"),
        ({"properties": {"datetime": "2024-01-15T10:30:00Z", "eo:cloud_cover": "cloudy"}}, "bad field"),
        ({"geometry": {"type": "Blob", "coordinates": []}}, "bad field"),
    ],
)
def test_malformed_items_are_rejected(change: dict[str, Any], reason: str) -> None:
    record = record_from_item({**make_item(0), **change}, "s")
    assert record.status == REJECTED
    assert reason in record.reason


# --- static STAC -----------------------------------------------------------------------------------


def test_read_item_collection_file(tmp_path: Path) -> None:
    items = [make_item(i) for i in range(4)]
    items[1]["assets"]["spectral_image"]["href"] = f"./data/{product(1)}-SPECTRAL_IMAGE.TIF"
    items[3]["collection"] = "OTHER"
    path = tmp_path / "stac" / "items.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))

    records = read_static_stac(path, SceneQuery(bbox=(11.5, 44.0, 20.0, 47.0)))

    assert datatakes(records) == [1, 2]  # 0 is outside the bbox, 3 in another collection
    assert all(r.source == str(path) for r in records)
    relative = next(r for r in records if r.datatake == 1001)
    assert relative.asset_map["image"] == str(tmp_path / "stac" / "data" / f"{product(1)}-SPECTRAL_IMAGE.TIF")


def test_read_catalog_with_item_links(tmp_path: Path) -> None:
    catalog = pystac.Catalog("enmap", "EnMAP products")
    collection = pystac.Collection.from_dict(make_collection())
    catalog.add_child(collection)
    for i in range(5):
        item = make_item(i)
        item["assets"]["spectral_image"]["href"] = f"./{product(i)}-SPECTRAL_IMAGE.TIF"
        collection.add_item(pystac.Item.from_dict(item))
    catalog.normalize_hrefs(str(tmp_path / "catalog"))
    catalog.save(pystac.CatalogType.SELF_CONTAINED)

    path = tmp_path / "catalog" / "catalog.json"
    records = read_static_stac(path, SceneQuery.from_options(end="2024-04-15"))

    assert datatakes(records) == [0, 1, 2, 3]
    assert [r.epsg for r in sorted(records, key=lambda r: r.product)] == [32632, 32633, None, 32632]
    image = sorted(records, key=lambda r: r.product)[0].asset_map["image"]
    assert image == str(tmp_path / "catalog" / COLLECTION / product(0) / f"{product(0)}-SPECTRAL_IMAGE.TIF")

    single = tmp_path / "catalog" / COLLECTION / product(4) / f"{product(4)}.json"
    assert datatakes(read_static_stac(single, SceneQuery())) == [4]


def test_find_scenes_reads_static_files_and_keeps_newest(tmp_path: Path) -> None:
    items = [make_item(0), make_item(0, version="010400"), make_item(1)]
    path = tmp_path / "items.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))

    status = {r.product: (r.status, r.reason) for r in find_scenes(str(path), SceneQuery())}

    assert status == {
        product(0): (REJECTED, f"superseded by newer processor version {product(0, '010400')}"),
        product(0, "010400"): (OK, ""),
        product(1): (OK, ""),
    }


# --- a live stac-fastapi-pgstac API ----------------------------------------------------------------


#: The live tests' collection on the session's STAC API, beside the example's ENMAP_HSI_L2A.
LIVE_COLLECTION = "ENMAP_HSI_L2A_CATALOG_TEST"


@pytest.fixture(scope="module")
def stac_url(stac: StacServer) -> str:
    """Collection LIVE_COLLECTION: items 0-11, a reprocessed item 0 (V010400) and an item 12 without an image asset."""
    items = [make_item(i) for i in range(N_ITEMS)]
    items += [make_item(0, version="010400"), make_item(N_ITEMS, image=False)]
    stac.load({**make_collection(), "id": LIVE_COLLECTION}, items)
    return stac.url


def live(**query: Any) -> SceneQuery:
    """A query of the live tests' collection."""
    return SceneQuery(collection=LIVE_COLLECTION, **query)


@dataclass
class Exchange:
    """One request pystac-client sent, and how many items came back."""

    method: str
    parameters: dict[str, Any]
    n_features: int


@pytest.fixture
def exchanges(monkeypatch: pytest.MonkeyPatch) -> list[Exchange]:
    """Every request of pystac-client's StacApiIO during the test, with the number of items answered."""
    seen: list[Exchange] = []
    original = StacApiIO.request

    def spy(self: StacApiIO, href: str, method: str | None = None, *args: Any, **kwargs: Any) -> str:
        text = original(self, href, method, *args, **kwargs)
        parameters = kwargs.get("parameters") or (args[1] if len(args) > 1 else None) or {}
        seen.append(Exchange(method or "GET", dict(parameters), len(json.loads(text).get("features", []))))
        return text

    monkeypatch.setattr(StacApiIO, "request", spy)
    return seen


def test_server_advertises_cql2_filter(stac_url: str) -> None:
    assert Client.open(stac_url).conforms_to(ConformanceClasses.FILTER)


def test_live_bbox_and_aoi(stac_url: str) -> None:
    assert datatakes(search_stac_api(stac_url, live(bbox=(13.5, 44.0, 17.5, 47.0)))) == [2, 3]
    aoi = box(20.5, 45.5, 22.5, 45.6)  # items 5 (20..21) and 6 (22..23)
    assert datatakes(search_stac_api(stac_url, live(aoi=aoi))) == [5, 6]
    both = live(aoi=aoi, bbox=(21.5, 40.0, 30.0, 50.0))  # bbox narrows the AOI on the client
    assert datatakes(search_stac_api(stac_url, both)) == [6]


def test_live_datetime_range_includes_whole_end_day(stac_url: str) -> None:
    query = SceneQuery.from_options(collection=LIVE_COLLECTION, start="2024-03-01", end="2024-05-15")
    assert datatakes(search_stac_api(stac_url, query)) == [2, 3, 4]


def test_live_cloud_and_quality_filtered_by_the_server(stac_url: str, exchanges: list[Exchange]) -> None:
    query = live(max_cloud=21.0, max_quality=1)

    records = search_stac_api(stac_url, query, page_size=3)

    assert datatakes(records) == [0, 0, 1, 3]  # cloud 0, 7, 21 with quality 0, 1, 0 (2 has 2); 0 twice (V2)
    searches = [e for e in exchanges if e.method == "POST"]
    assert list(searches[0].parameters["collections"]) == [LIVE_COLLECTION]  # this test's items only
    assert searches[0].parameters["filter-lang"] == "cql2-json"
    assert searches[0].parameters["filter"] == {
        "op": "and",
        "args": [
            {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 21.0]},
            {"op": "<=", "args": [{"property": "enmap:overallQuality"}, 1.0]},
        ],
    }
    assert sum(e.n_features for e in searches) == 4  # the server filtered: nothing left for the client


def test_live_client_side_fallback_gives_same_ids(stac_url: str, exchanges: list[Exchange]) -> None:
    query = live(max_cloud=21.0, max_quality=1)

    on_server = {r.product for r in search_stac_api(stac_url, query, page_size=5)}
    exchanges.clear()
    on_client = {r.product for r in search_stac_api(stac_url, query, page_size=5, server_filter=False)}

    assert on_client == on_server and len(on_client) == 4
    searches = [e for e in exchanges if e.method == "POST"]
    assert all("filter" not in e.parameters for e in searches)
    assert sum(e.n_features for e in searches) == N_ITEMS + 2  # everything came, the client filtered


def test_live_paging_returns_every_item_once(stac_url: str, exchanges: list[Exchange]) -> None:
    records = search_stac_api(stac_url, live(), page_size=3)

    assert len(records) == N_ITEMS + 2
    assert len({r.product for r in records}) == N_ITEMS + 2
    pages = [e.n_features for e in exchanges if e.method == "POST"]
    assert pages == [3, 3, 3, 3, 2]


def test_live_find_scenes_rejects_old_versions_and_imageless_items(stac_url: str) -> None:
    records = {r.product: r for r in find_scenes(stac_url, live())}

    assert records[product(0)].reason == f"superseded by newer processor version {product(0, '010400')}"
    assert (records[product(N_ITEMS)].status, records[product(N_ITEMS)].reason) == (REJECTED, NO_IMAGE)
    assert sum(r.status == OK for r in records.values()) == N_ITEMS
    assert {r.source for r in records.values()} == {stac_url}


# --- retries and credentials against a scripted HTTP server -----------------------------------------


Answer = tuple[int, dict[str, str], dict[str, Any]]


@dataclass
class Scripted:
    """A STAC API on 127.0.0.1 whose answers come from ``script(n, path, request headers)``."""

    script: Callable[[int, str, dict[str, str]], Answer | None]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def answer(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        self.requests.append((method, path, headers.get("Authorization")))
        return self.script(len(self.requests), path, headers) or self.stac(path)

    def stac(self, path: str) -> Answer:
        """A minimal API: a landing page, and one page of two items (cloud 0 and 7) at /search."""
        if path == "/search":
            return 200, {}, {"type": "FeatureCollection", "features": [make_item(0), make_item(1)], "links": []}
        conforms = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]
        links = [
            {"rel": "self", "href": self.url},  # as opened: else pystac reads the root again
            {"rel": "root", "href": self.url},
            {"rel": "search", "href": self.url + "/search", "method": "POST", "type": "application/geo+json"},
        ]
        landing = {"type": "Catalog", "id": "scripted", "description": "test", "stac_version": "1.0.0"}
        return 200, {}, {**landing, "conformsTo": conforms, "links": links}


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[_QuietServer] = []

    def start(script: Callable[[int, str, dict[str, str]], Answer | None]) -> Scripted:
        api = Scripted(script)
        server = _QuietServer(("127.0.0.1", 0), _handler(api))
        api.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return api

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout tests) is expected: print nothing."""


def _handler(api: Scripted) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._reply()

        def _reply(self) -> None:
            status, headers, body = api.answer(self.command, self.path, dict(self.headers))
            send_reply(self, status, {"Content-Type": "application/json", **headers}.items(), json.dumps(body).encode())

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the environment or the user's ~/.netrc unless a test sets them."""
    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_retries_503_honouring_retry_after_within_cap(scripted: Callable[..., Scripted]) -> None:
    api = scripted(lambda n, path, headers: (503, {"Retry-After": "30"}, {}) if n <= 2 else None)
    policy = RetryPolicy(attempts=5, backoff_s=0.0, max_wait_s=0.05)

    started = time.monotonic()
    records = search_stac_api(api.url, SceneQuery(max_cloud=5.0), policy=policy)

    assert time.monotonic() - started < 5  # Retry-After: 30 was capped at 0.05 s
    assert [path for _, path, _ in api.requests] == ["/", "/", "/", "/search"]
    assert datatakes(records) == [0]  # no filter conformance: cloud filtered on the client


def test_gives_up_after_bounded_attempts(scripted: Callable[..., Scripted]) -> None:
    api = scripted(lambda n, path, headers: (500, {}, {"detail": "database is down"}))

    with pytest.raises(StacApiError) as caught:
        search_stac_api(api.url, SceneQuery(), policy=FAST)

    assert len(api.requests) == FAST.attempts == 3
    assert caught.value.status == 500
    assert str(caught.value).startswith(f"STAC API {api.url} answered HTTP 500 after 3 attempts")
    assert "database is down" in str(caught.value)


def test_unreachable_api_gives_up(unused_port: int) -> None:
    with pytest.raises(StacApiError, match="could not be reached after 3 attempts") as caught:
        search_stac_api(f"http://127.0.0.1:{unused_port}", SceneQuery(), policy=FAST)
    assert caught.value.status is None


@pytest.fixture
def unused_port() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = int(server.server_address[1])
    server.server_close()
    return port


def test_timeouts_are_retried_then_reported(scripted: Callable[..., Scripted]) -> None:
    def slow_search(n: int, path: str, headers: dict[str, str]) -> Answer | None:
        if path == "/search":
            time.sleep(1.0)
        return None

    api = scripted(slow_search)
    policy = RetryPolicy(attempts=2, backoff_s=0.0, max_wait_s=0.01, timeout_s=0.2)

    with pytest.raises(StacApiError, match=r"could not be reached after 2 attempts.*[Tt]imeout"):
        search_stac_api(api.url, SceneQuery(), policy=policy)
    assert [path for _, path, _ in api.requests] == ["/", "/search", "/search"]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_not_retried(scripted: Callable[..., Scripted], status: int) -> None:
    api = scripted(lambda n, path, headers: (status, {}, {"detail": "no"}))

    with pytest.raises(StacApiError) as caught:
        search_stac_api(api.url, SceneQuery(), policy=FAST)

    assert len(api.requests) == 1
    assert caught.value.status == status
    message = str(caught.value)
    assert f"refused the credentials (HTTP {status}; sent: none)" in message
    assert all(name in message for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV, "netrc"))


def test_token_is_sent_but_never_shown(
    scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = "tok-3f9a1c77e2"
    monkeypatch.setenv(TOKEN_ENV, token)
    caplog.set_level(logging.DEBUG)
    echo = scripted(lambda n, path, headers: (500, {}, {"echo": headers}) if path == "/search" else None)

    with pytest.raises(StacApiError) as caught:
        search_stac_api(echo.url, SceneQuery(), policy=FAST)

    assert {auth for _, _, auth in echo.requests} == {f"Bearer {token}"}
    assert "Bearer ***" in str(caught.value)  # the server echoed it; the message hides it
    assert token not in str(caught.value) and token not in repr(caught.value.args)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    api = scripted(lambda n, path, headers: None)
    query = SceneQuery(max_cloud=50.0)
    records = search_stac_api(api.url, query, policy=FAST)
    assert len(records) == 2
    assert token not in json.dumps(query.as_dict()) + repr(records)
    assert token not in caplog.text  # not even pystac-client's DEBUG log of each request
    assert "Authorization" not in caplog.text


def test_refused_token_names_where_it_came_from(
    scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "tok-expired")
    api = scripted(lambda n, path, headers: (401, {}, {}))

    with pytest.raises(StacApiError, match=f"sent: a bearer token from {TOKEN_ENV}") as caught:
        search_stac_api(api.url, SceneQuery(), policy=FAST)
    assert "tok-expired" not in str(caught.value)


def test_basic_auth_from_environment(scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USER_ENV, "ada")
    monkeypatch.setenv(PASSWORD_ENV, "pw-82c1")
    api = scripted(lambda n, path, headers: None)

    search_stac_api(api.url, SceneQuery(), policy=FAST)

    assert {auth for _, _, auth in api.requests} == {"Basic " + base64.b64encode(b"ada:pw-82c1").decode()}
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ValueError, match=f"set both {USER_ENV} and {PASSWORD_ENV}"):
        search_stac_api(api.url, SceneQuery(), policy=FAST)


def test_basic_auth_from_netrc(
    scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login grace password pw-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    api = scripted(lambda n, path, headers: None)

    search_stac_api(api.url, SceneQuery(), policy=FAST)

    assert {auth for _, _, auth in api.requests} == {"Basic " + base64.b64encode(b"grace:pw-netrc").decode()}


def test_credentials_stay_on_the_api_host(scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "tok-local")
    other = scripted(lambda n, path, headers: None)

    def next_page_elsewhere(n: int, path: str, headers: dict[str, str]) -> Answer | None:
        if path != "/search":
            return None
        link = {"rel": "next", "href": other.url.replace("127.0.0.1", "localhost") + "/search", "method": "POST"}
        return 200, {}, {"type": "FeatureCollection", "features": [make_item(2)], "links": [link]}

    api = scripted(next_page_elsewhere)
    records = search_stac_api(api.url, SceneQuery(), policy=FAST)

    assert datatakes(records) == [0, 1, 2]
    assert {auth for _, _, auth in api.requests} == {"Bearer tok-local"}
    assert other.requests == [("POST", "/search", None)]


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(ValueError, match="not in the URL"):
        search_stac_api("https://ada:secret@stac.example/api", SceneQuery())
