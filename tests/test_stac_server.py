"""End-to-end checks of the test STAC API (pgstac + stac-fastapi-pgstac) via pystac-client."""

from __future__ import annotations

from typing import Any

import pytest
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses

from stac_server import StacServer

#: This module's collection on the session's STAC API (beside the example's and other modules').
COLLECTION_ID = "ENMAP_HSI_L2A_SERVER_TEST"
N_ITEMS = 12


def _item_id(i: int) -> str:
    return f"ENMAP_L2A_{i:02d}"


def make_collection() -> dict[str, Any]:
    """A minimal EnMAP L2A collection."""
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": COLLECTION_ID,
        "description": "EnMAP HSI L2A surface reflectance (test fixture)",
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[10.0, 45.0, 34.0, 46.0]]},
            "temporal": {"interval": [["2024-01-01T00:00:00Z", "2024-12-31T23:59:59Z"]]},
        },
    }


def make_item(i: int) -> dict[str, Any]:
    """Item ``i``: bbox [10+2i, 45, 11+2i, 46], 2024-(i+1)-15, cloud cover 7*i."""
    west, south, east, north = 10.0 + 2 * i, 45.0, 11.0 + 2 * i, 46.0
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": _item_id(i),
        "collection": COLLECTION_ID,
        "bbox": [west, south, east, north],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"datetime": f"2024-{i + 1:02d}-15T10:30:00Z", "eo:cloud_cover": 7.0 * i},
        "assets": {
            "spectral_image": {
                "href": f"https://example.invalid/{_item_id(i)}/SPECTRAL_IMAGE.TIF",
                "type": "image/tiff; application=geotiff",
                "roles": ["data"],
            }
        },
        "links": [],
    }


@pytest.fixture(scope="module")
def client(stac: StacServer) -> Client:
    """The session's STAC API, the 12 test items loaded into this module's collection."""
    stac.load(make_collection(), [make_item(i) for i in range(N_ITEMS)])
    return Client.open(stac.url)


def _ids(client: Client, **search: Any) -> set[str]:
    result = client.search(collections=[COLLECTION_ID], **search)
    return {item.id for item in result.items()}


def test_landing_page_conforms(client: Client, stac: StacServer) -> None:
    assert client.conforms_to(ConformanceClasses.ITEM_SEARCH)
    assert client.conforms_to(ConformanceClasses.FILTER)
    assert {c.id for c in client.get_collections()} == set(stac.collections)  # every collection loaded, once
    assert COLLECTION_ID in stac.collections


def test_bbox_search(client: Client) -> None:
    # Items 2 ([14, 15]) and 3 ([16, 17]) intersect lon 13.5..17.5.
    assert _ids(client, bbox=[13.5, 44.0, 17.5, 47.0]) == {_item_id(2), _item_id(3)}


def test_datetime_search(client: Client) -> None:
    found = _ids(client, datetime="2024-03-01T00:00:00Z/2024-05-31T23:59:59Z")
    assert found == {_item_id(2), _item_id(3), _item_id(4)}


def test_cql2_filter(client: Client) -> None:
    cql2 = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 30]}
    found = _ids(client, filter=cql2, filter_lang="cql2-json")
    assert found == {_item_id(i) for i in range(5)}  # 0, 7, 14, 21, 28


def test_paging(client: Client) -> None:
    search = client.search(collections=[COLLECTION_ID], limit=5)
    pages = list(search.pages())
    ids = [item.id for page in pages for item in page]
    assert len(pages) > 1
    assert all(len(page) <= 5 for page in pages)
    assert sorted(ids) == sorted(_item_id(i) for i in range(N_ITEMS))
