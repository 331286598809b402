"""STAC items checked against the official JSON schemas kept in ``tests/data/stac-schemas`` (offline)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import ValidationError

from stac_schemas import (
    SCHEMAS,
    StacError,
    local_schema_path,
    stac_errors,
    validate_stac_collection,
    validate_stac_item,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
DLR_ITEM = REAL / "ENMAP01-____L2A-DT0000080454_20240630T082045Z_001_V010402_20240701T122237Z.stac-item.json"
EO = "https://stac-extensions.github.io/eo/v{}/schema.json"
CORE = "https://schemas.stacspec.org/v{}/item-spec/json-schema/item.json"
VERSIONS = ["1.0.0", "1.1.0"]


def minimal_item(version: str, *extensions: str) -> dict[str, Any]:
    """A small valid item: a 30 m pixel footprint, one asset, a collection and its link."""
    ring = [[13.0, 52.0], [13.0004, 52.0], [13.0004, 52.0003], [13.0, 52.0003], [13.0, 52.0]]
    return {
        "type": "Feature",
        "stac_version": version,
        "stac_extensions": list(extensions),
        "id": "ENMAP01-____L2A-DT0000000001_20240630T082045Z_001_V010402_20240701T122237Z",
        "collection": "ENMAP_HSI_L2A",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [13.0, 52.0, 13.0004, 52.0003],
        "properties": {"datetime": "2024-06-30T08:20:45Z", "platform": "enmap", "eo:cloud_cover": 0.0},
        "links": [{"rel": "collection", "href": "./collection.json", "type": "application/json"}],
        "assets": {"image": {"href": "./image.tif", "roles": ["data"]}},
    }


def errors(item: dict[str, Any]) -> set[StacError]:
    return set(stac_errors(item))


def test_kept_schemas_sit_at_the_path_of_their_id() -> None:
    for path in SCHEMAS.rglob("*.json"):
        schema_id = json.loads(path.read_bytes())["$id"].rstrip("#")
        if schema_id.endswith("/commonjson"):  # upstream typo in STAC 1.1.0's common.json
            schema_id = schema_id.removesuffix("commonjson") + "common.json"
        assert local_schema_path(schema_id) == path


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("eo", ["1.1.0", "2.0.0"])
def test_a_minimal_item_is_valid(version: str, eo: str) -> None:
    validate_stac_item(minimal_item(version, EO.format(eo)))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("eo", ["1.1.0", "2.0.0"])
def test_a_cloud_cover_given_as_a_string_breaks_the_eo_schema(version: str, eo: str) -> None:
    item = minimal_item(version, EO.format(eo))
    item["properties"]["eo:cloud_cover"] = "0"
    assert errors(item) == {(EO.format(eo), "$.properties['eo:cloud_cover']", "'0' is not of type 'number'")}
    with pytest.raises(ValidationError, match=r"eo/v.*/schema\.json: \$\.properties\['eo:cloud_cover'\]"):
        validate_stac_item(item)


@pytest.mark.parametrize("version", VERSIONS)
def test_collection_and_collection_link_go_together(version: str) -> None:
    """Core rule (1.0.0 and 1.1.0): a ``collection`` link requires ``collection``; without one it is forbidden."""
    no_link = minimal_item(version)
    no_link["links"] = []
    assert errors(no_link) == {(CORE.format(version), "$.collection", "'ENMAP_HSI_L2A' should not be valid under {}")}
    no_field = minimal_item(version)
    del no_field["collection"]
    assert errors(no_field) == {(CORE.format(version), "$", "'collection' is a required property")}


@pytest.mark.parametrize("version", VERSIONS)
def test_core_defects_are_named_with_their_path(version: str) -> None:
    item = minimal_item(version)
    item["bbox"] = item["bbox"][:3]
    del item["properties"]["datetime"]
    item["assets"]["image"].pop("href")
    found = errors(item)
    assert (CORE.format(version), "$.assets.image", "'href' is a required property") in found
    assert any(path == "$.bbox" for _, path, _ in found)
    assert any(path == "$.properties" and "datetime" in message for _, path, message in found)


def test_a_schema_not_kept_locally_is_named_not_fetched() -> None:
    item = minimal_item("1.1.0", "https://stac-extensions.github.io/raster/v1.1.0/schema.json")
    with pytest.raises(LookupError, match=r"'https://stac-extensions\.github\.io/raster/v1\.1\.0/schema\.json'"):
        validate_stac_item(item)
    with pytest.raises(LookupError, match=r"v9\.9\.9"):
        validate_stac_item(minimal_item("9.9.9"))


def test_dlr_real_item_breaks_the_eo_and_sat_schemas() -> None:
    """DLR's ENMAP_HSI_L2A item passes core 1.0.0, view, projection, processing and scientific, but not eo or sat."""
    item = json.loads(DLR_ITEM.read_text())
    eo, sat = EO.format("1.1.0"), "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
    band_names = {(s, p, m) for s, p, m in errors(item) if p.startswith("$.assets.image['eo:bands']")}
    assert len(band_names) == 224  # "name": 1, 2, ... (integers; eo wants strings)
    assert all(s == eo and p.endswith("].name") and m.endswith("is not of type 'string'") for s, p, m in band_names)
    assert errors(item) - band_names == {
        (eo, "$.properties['eo:cloud_cover']", "'0' is not of type 'number'"),
        (eo, "$.properties['eo:snow_cover']", "'0' is not of type 'number'"),
        (eo, "$.properties", "'eo:instrument' does not match any of the regexes: '^(?!eo:)'"),
        (
            sat,
            "$.properties['sat:orbit_state']",
            "'DESCENDING' is not one of ['ascending', 'descending', 'geostationary']",
        ),
        (sat, "$.properties['sat:relative_orbit']", "'12097' is not of type 'integer'"),
    }
    fixed = copy.deepcopy(item)
    fixed["stac_extensions"] = [url for url in item["stac_extensions"] if url not in (eo, sat)]
    validate_stac_item(fixed)


def test_a_minimal_collection_is_valid() -> None:
    for version in VERSIONS:
        validate_stac_collection(
            {
                "type": "Collection",
                "stac_version": version,
                "id": "ENMAP_HSI_L2A",
                "description": "EnMAP HSI L2A",
                "license": "CC-BY-4.0",
                "extent": {
                    "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
                    "temporal": {"interval": [["2022-04-01T00:00:00Z", None]]},
                },
                "links": [],
            }
        )
