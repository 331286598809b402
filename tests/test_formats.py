"""Every raster format DLR delivers (GeoTIFF strips, COG, ENVI BSQ/BIL/BIP, JPEG2000) builds the same corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import build
from spectral_corpus.catalog.rasters import RASTER_FORMATS
from spectral_corpus.catalog.synth import SCENARIO, write_example
from spectral_corpus.pipeline.reader import CorpusReader

#: The other formats, one per scene (C and E are ZIPs: ENVI and JPEG2000 are read inside ZIPs too).
OTHER_FORMATS = {"A": "BSQ", "B": "BIL", "C": "BIP", "D": "JP2", "E": "JP2"}


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    example = write_example(root, seed=0, raster_formats=OTHER_FORMATS)
    return build(example.archive, root / "corpus")


def test_every_format_is_covered() -> None:
    used = {"GTiff", "COG"} | set(OTHER_FORMATS.values())  # the default example: strips, and B as a COG
    assert used == set(RASTER_FORMATS)
    assert {plan.label for plan in SCENARIO} == set(OTHER_FORMATS)


def test_other_formats_build_the_same_corpus(corpus: Path, other_corpus: Path) -> None:
    expected, found = CorpusReader(corpus), CorpusReader(other_corpus)
    columns = ["obs", "location_id", "product", "ix", "iy", "row", "col", "frac_cloud", "frac_nodata"]
    pd.testing.assert_frame_equal(found.table("observations")[columns], expected.table("observations")[columns])
    assert np.array_equal(found.patches[:], expected.patches[:])
    scenes = found.table("scenes").set_index("product")
    assert set(scenes["status"]) == {"ok", "rejected"}  # D's older version is superseded
    hrefs = " ".join(href for assets in scenes["assets"] for _, href in assets)
    assert all(ext in hrefs for ext in ("-SPECTRAL_IMAGE.BSQ", "-SPECTRAL_IMAGE.BIL", "-SPECTRAL_IMAGE.BIP", ".JP2"))
