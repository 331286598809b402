"""METADATA.XML: DLR's real file parses to its exact values; ours follow its layout; bad files are named."""

from __future__ import annotations

import gzip
import io
import re
import xml.etree.ElementTree as ET
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spectral_corpus.catalog.errors import ProductError
from spectral_corpus.catalog.hrefs import open_member
from spectral_corpus.catalog.metadata import (
    CHUNK_BYTES,
    TAIL_BYTES,
    metadata_xml,
    parse_metadata,
    projection_epsg,
    read_metadata,
)
from spectral_corpus.catalog.synth import SCENARIO, Landscape, _render

REAL = Path(__file__).parent / "data" / "real"
REAL_NAME = "ENMAP01-____L2A-DT0000326721_20170626T102020Z_001_V000204_20200406T201930Z"


def real_xml() -> bytes:
    return gzip.decompress((REAL / f"{REAL_NAME}-METADATA.XML.gz").read_bytes())


def test_real_metadata_parses_to_its_values() -> None:
    data = real_xml()
    read = read_metadata(io.BytesIO(data), "real")
    meta = read.metadata
    assert (meta.name, meta.level, meta.datatake, meta.tile) == (REAL_NAME, "L2A", 326721, 1)
    assert meta.processor == "00.02.04"
    assert meta.version == "000204"
    assert meta.acquired == datetime(2017, 6, 26, 10, 20, 20, 999936, tzinfo=UTC)
    assert meta.processed == datetime(2020, 4, 6, 20, 19, 30, 939073, tzinfo=UTC)
    assert (meta.width, meta.height, meta.n_bands, len(meta.bands)) == (1128, 1212, 218, 218)
    assert (meta.bands.centres_nm[0], meta.bands.fwhm_nm[0]) == (423.03, 6.93)
    assert set(meta.bands.gains) == {0.0001} and set(meta.bands.offsets) == {0.0}
    assert (meta.quality, meta.cloud_cover, meta.cloud_shadow, meta.water_cover) == (1, 0.0, 8.0, 2.0)
    assert meta.product_format == "GeoTIFF+Metadata"
    assert meta.corners[0] == (10.7960234, 47.7875252)  # upper-left of the valid swath
    assert meta.corners[2] == (11.0813528, 47.4554646)  # lower-right
    # The header lies in the first 70 KB of the 4.2 MB, the projection in the last 38 KB: nothing else is read.
    assert (meta.projection, meta.epsg) == ("UTM_Zone32_North", 32632)
    assert len(data) > 4_000_000 and read.bytes_read <= 70_000 + CHUNK_BYTES + TAIL_BYTES


class _Unseekable(io.BytesIO):
    def seekable(self) -> bool:
        return False


def test_projection_comes_from_the_tail(tmp_path: Path) -> None:
    data = real_xml()
    read = read_metadata(_Unseekable(data), "real")  # cannot seek: read on to the end
    assert read.metadata.projection == "UTM_Zone32_North" and read.bytes_read == len(data)
    archive = tmp_path / "product.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo("stored.XML"), data, zipfile.ZIP_STORED)
        zf.writestr(zipfile.ZipInfo("deflated.XML"), data, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(archive) as zf:
        for member, whole in (("stored.XML", False), ("deflated.XML", True)):
            with open_member(zf, member) as stream:
                read = read_metadata(stream, member)
            assert read.metadata == parse_metadata(data, member), member
            assert (read.bytes_read == len(data)) == whole  # a stored member seeks in place to its tail
    moved = real_xml().replace(b"<projection>UTM_Zone32_North</projection>", b"")
    assert parse_metadata(moved, "real").projection is None  # not stated: the CRS comes from the raster alone
    assert (projection_epsg("UTM_Zone36_South"), projection_epsg("Geographic")) == (32736, None)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda x: re.sub(rb"<datatakeID>.*?</datatakeID>", b"", x), "lacks level_X/specific/datatakeID"),
        (lambda x: x.replace(b"<tileID>01</tileID>", b"<tileID>one</tileID>"), "bad level_X/specific/tileID ('one')"),
        (lambda x: x.replace(b"<channels>218</channels>", b"<channels></channels>", 1), "lacks level_X/product/image"),
        (lambda x: re.sub(rb"<bandCharacterisation>.*</bandCharacterisation>", b"", x, flags=re.S), "bandID"),
        (lambda x: x.replace(b"<frame>lower_right</frame>", b"<frame>lr</frame>", 1), "[frame=lower_right]"),
        (lambda x: x[:30_000], "not well-formed XML"),
        (lambda x: x.replace(b"level_X", b"level_Y"), "root element is 'level_Y'"),
    ],
)
def test_bad_metadata_names_the_field(edit: object, message: str) -> None:
    data = edit(real_xml())  # type: ignore[operator]
    with pytest.raises(ProductError, match=re.escape(message)) as caught:
        parse_metadata(data, "/data/x-METADATA.XML")
    assert str(caught.value).startswith("/data/x-METADATA.XML: METADATA.XML ")


def test_optional_fields_may_be_absent() -> None:
    data = re.sub(rb"<(hazeCover|productFormat)>.*?</\1>", b"", real_xml())
    meta = parse_metadata(data, "real")
    assert (meta.haze_cover, meta.product_format, meta.cloud_cover) == (None, None, 0.0)


def test_written_metadata_reads_back() -> None:
    meta = parse_metadata(real_xml(), "real")
    again = parse_metadata(metadata_xml(meta), "ours")
    assert again == meta


def _paths(root: ET.Element) -> set[str]:
    found: set[str] = set()

    def walk(node: ET.Element, prefix: str) -> None:
        for child in node:
            path = f"{prefix}/{child.tag}" if prefix else child.tag
            found.add(path)
            walk(child, path)

    walk(root, "")
    return found


def test_example_products_use_the_real_layout() -> None:
    """Every element our generator writes sits at a path the real file has too, in the same order."""
    plan = SCENARIO[0]
    product = _render(plan, Landscape.from_seed(0), 0)
    ours = ET.fromstring(product.files[f"{plan.name}-METADATA.XML"])
    real = ET.fromstring(real_xml())
    assert ours.tag == real.tag == "level_X"
    assert _paths(ours) <= _paths(real)
    order = [child.tag for child in real]
    assert [child.tag for child in ours] == [tag for tag in order if tag in {c.tag for c in ours}]
    for path in ("specific/datatakeID", "specific/tileID", "base/revision", "specific/processingDateTime"):
        assert len(ours.findtext(path) or "") == len(real.findtext(path) or ""), path  # same value formats
    meta = parse_metadata(product.files[f"{plan.name}-METADATA.XML"], plan.name)
    assert (meta.name, meta.projection, meta.epsg, meta.n_bands) == (plan.name, "UTM_Zone32_North", 32632, 224)
