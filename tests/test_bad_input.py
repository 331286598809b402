"""Bad input, end to end: each broken product is rejected with a reason naming it and the good scenes
still make the same corpus; a failing STAC API, an empty search and a path that holds no corpus stop
with a clear message (exit code 2 on the command line).

One archive holds the example's good products and a copy of product E, broken in one way, for every
kind of bad input (datatakes 9101..9119, acquired one day apart at E's place, so any of them that got
through would add observations there). It is built once; each test reads its product's verdict.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import astuple, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.shutil
from affine import Affine

from conftest import build
from fault_proxy import Fault, FaultProxy
from spectral_corpus.catalog.metadata import Bands, metadata_xml, parse_metadata
from spectral_corpus.catalog.product import ProductName, product_filename
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.stac import (
    BACKOFF_ENV,
    MAX_WAIT_ENV,
    PASSWORD_ENV,
    RETRIES_ENV,
    TIMEOUT_ENV,
    TOKEN_ENV,
    USER_ENV,
    RetryPolicy,
    record_from_item,
    search_stac_api,
)
from spectral_corpus.catalog.synth import SCENARIO, Example
from spectral_corpus.corpus_format import FORMAT_VERSION, OLDEST_READABLE, FormatError
from spectral_corpus.pipeline.build import BuildOptions, build_corpus
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.errors import BuildError
from spectral_corpus.pipeline.info import corpus_summary
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.inspect import inspect_scene
from spectral_corpus.stages.rules import Rules
from test_build import EXPECTED

E_PLAN = next(plan for plan in SCENARIO if plan.label == "E")
E_NAME = E_PLAN.name
#: Retry fast: 3 tries, no backoff, waits capped at 0.25 s, 5 s per request.
FAST = RetryPolicy(attempts=3, backoff_s=0.0, max_wait_s=0.25, timeout_s=5.0)


# --- making bad products ---------------------------------------------------------------------------


def product(datatake: int) -> str:
    """The name of bad product ``datatake``: E's name, that datatake, acquired datatake - 9100 days later."""
    e = ProductName.parse(E_NAME)
    return str(replace(e, datatake=datatake, acquired=e.acquired + timedelta(days=datatake - 9100)))


def _file(folder: Path, key: str) -> Path:
    return folder / product_filename(folder.name, key)


def _fresh(path: Path) -> Path:
    """``path`` unlinked first: products share the template's files through hard links."""
    path.unlink(missing_ok=True)
    return path


def _copy_of_e(template: Path, parent: Path, datatake: int) -> Path:
    """E's files under ``parent/<name>``, renamed, METADATA.XML naming the new product."""
    name = product(datatake)
    folder = parent / name
    folder.mkdir(parents=True)
    for path in template.iterdir():
        target = folder / path.name.replace(E_NAME, name)
        if path.name.endswith("-METADATA.XML"):
            meta = parse_metadata(path.read_bytes(), str(path))
            new = replace(meta, name=name, datatake=datatake, acquired=ProductName.parse(name).acquired)
            target.write_bytes(metadata_xml(new))
        else:
            os.link(path, target)
    return folder


def _bands(template: Path) -> Bands:
    return parse_metadata(_file(template, "metadata").read_bytes(), str(template)).bands


def _edit_metadata(folder: Path, **changes: Any) -> None:
    path = _file(folder, "metadata")
    path.write_bytes(metadata_xml(replace(parse_metadata(path.read_bytes(), str(path)), **changes)))


def _write_image(folder: Path, cube: np.ndarray, **profile: Any) -> None:
    """Replace the spectral image by ``cube`` with E's profile changed by ``profile``."""
    image = _file(folder, "image")
    with rasterio.open(image) as src:
        base = src.profile
    with rasterio.open(_fresh(image), "w", **{**base, "zlevel": 1, **profile}) as dst:
        dst.write(cube)


def _georeference(folder: Path, transform: Affine | None = None, crs: str | None = None) -> None:
    """Give a private copy of the spectral image another geotransform or CRS (in place, pixels kept)."""
    image = _file(folder, "image")
    data = image.read_bytes()
    _fresh(image).write_bytes(data)
    with rasterio.open(image, "r+") as dst:
        if transform is not None:
            dst.transform = transform
        if crs is not None:
            dst.crs = crs


def _as_cog(folder: Path, cog: Path, spoil: Callable[[bytearray], None]) -> None:
    """Replace the spectral image by E's COG (``-SPECTRAL_IMAGE_COG.TIF``), spoiled by ``spoil``."""
    data = bytearray(cog.read_bytes())
    spoil(data)
    _fresh(_file(folder, "image"))
    (folder / f"{folder.name}-SPECTRAL_IMAGE_COG.TIF").write_bytes(bytes(data))


def _zip(folder: Path, archive: Path, loose: dict[str, bytes], links: dict[str, str]) -> None:
    """Pack ``folder`` as ``archive/<name>.ZIP`` (members ``<name>/<file>``) plus ``loose`` members and
    ``links`` (member -> target) stored as Unix symbolic links."""
    with zipfile.ZipFile(archive / f"{folder.name}.ZIP", "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{folder.name}/{path.name}")
        for member, data in loose.items():
            zf.writestr(member, data)
        for member, target in links.items():
            info = zipfile.ZipInfo(member)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    shutil.rmtree(folder)


def _e_cube(template: Path) -> tuple[np.ndarray, Affine]:
    with rasterio.open(template / product_filename(E_NAME, "image")) as src:
        return src.read(), src.transform


def _garbage_in_block(tif: Path, band: int, at: float) -> Callable[[bytearray], None]:
    """64 garbage bytes ``at`` (0 = start, 0.5 = middle) block (1, 1) of ``band`` of ``tif``."""
    with rasterio.open(tif) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=band))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=band))

    def spoil(data: bytearray) -> None:
        start = offset + int(size * at)
        data[start : start + 64] = b"\xa5" * 64

    return spoil


def _truncate(data: bytearray) -> None:
    del data[len(data) * 6 // 10 :]


def _zero_header(data: bytearray) -> None:
    data[:16] = bytes(16)


def _write_bad_products(example: Example, root: Path) -> Path:
    """The good products of ``example`` (hard links) and one broken copy of E per kind of bad input."""
    archive, outside, staging = root / "archive", root / "outside", root / "staging"
    for path in example.archive.iterdir():
        if path.is_dir():
            shutil.copytree(path, archive / path.name, copy_function=os.link)
        elif path.suffix == ".ZIP":
            archive.mkdir(parents=True, exist_ok=True)
            os.link(path, archive / path.name)
    with zipfile.ZipFile(example.archive / E_PLAN.path) as zf:
        zf.extractall(outside)
    template = outside / E_NAME
    cube, transform = _e_cube(template)
    cog = outside / "e-cog.tif"
    rasterio.shutil.copy(  # no overviews, fast deflate: what is tested is the full-resolution data
        template / product_filename(E_NAME, "image"),
        cog,
        driver="COG",
        COMPRESS="DEFLATE",
        LEVEL=1,
        BLOCKSIZE=128,
        OVERVIEWS="NONE",
    )

    def copy(datatake: int, parent: Path = archive) -> Path:
        return _copy_of_e(template, parent, datatake)

    _as_cog(copy(9101), cog, _truncate)
    _as_cog(copy(9102), cog, _garbage_in_block(cog, band=1, at=0.0))
    _as_cog(copy(9119), cog, _zero_header)
    _write_image(copy(9103), (cube * 1e-4).astype(np.float32), dtype="float32", predictor=1)
    _write_image(copy(9104), cube[:200], count=200)
    _fresh(_file(copy(9105), "quality_cloud"))
    metadata = _file(copy(9106), "metadata")
    metadata.write_bytes(metadata.read_bytes()[:4000])  # a download cut short
    _edit_metadata(copy(9107), projection="UTM_Zone32_North")
    _edit_metadata(copy(9108), width=300, height=290)
    _edit_metadata(copy(9109), n_bands=202, bands=Bands(*(v[:202] for v in astuple(_bands(template)))))
    _georeference(copy(9110), transform=Affine.translation(10, 0) @ transform)  # 10 m east
    _georeference(copy(9111), transform=transform @ Affine.rotation(2.0))
    _georeference(copy(9112), transform=Affine(0.0004, 0, 15.1, 0, -0.00027, 52.4), crs="EPSG:4326")
    _write_image(copy(9113), np.full_like(cube, -32768))
    _zip(copy(9114, staging), archive, {"../evil.txt": b"outside the product folder\n"}, {})
    _zip(copy(9115, staging), archive, {"/tmp/evil.txt": b"an absolute path\n"}, {})
    _zip(copy(9116, staging), archive, {}, {f"{product(9116)}/passwd.TXT": "/etc/passwd"})
    linked = _file(copy(9117), "pixelmask")
    _fresh(linked).symlink_to(template / product_filename(E_NAME, "pixelmask"))
    (archive / product(9118)).symlink_to(copy(9118, outside), target_is_directory=True)
    return archive


@pytest.fixture(scope="module")
def bad_archive(example: Example, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_bad_products(example, tmp_path_factory.mktemp("bad_input"))


@pytest.fixture(scope="module")
def bad_corpus(bad_archive: Path) -> Path:
    return build(bad_archive, bad_archive.parent / "corpus")


@pytest.fixture(scope="module")
def summary(bad_corpus: Path) -> dict[str, Any]:
    return corpus_summary(CorpusReader(bad_corpus))


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STAC credentials or retry settings from the environment or ~/.netrc unless a test sets them."""
    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV, RETRIES_ENV, TIMEOUT_ENV, BACKOFF_ENV, MAX_WAIT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def rejected(summary: dict[str, Any], datatake: int, text: str, group: str) -> str:
    """Check that bad product ``datatake`` was rejected for ``text``, counted under ``group``."""
    reason: str = summary["scenes"]["rejected_scenes"][product(datatake)]
    assert text in reason, reason
    assert summary["scenes"]["rejected_as"][product(datatake)] == group
    assert summary["scenes"]["rejected_by_reason"][group] >= 1
    return reason


# --- bad products ----------------------------------------------------------------------------------


def test_good_scenes_build_the_same_corpus_among_bad_products(summary: dict[str, Any]) -> None:
    assert {k: summary[k] for k in EXPECTED} == EXPECTED  # 12 observations at 7 locations, as without them
    scenes = summary["scenes"]
    assert (scenes["total"], scenes["used"], scenes["rejected"]) == (6 + 19, 5, 1 + 19)
    assert scenes["rejected_by_reason"] == {
        "CRS or grid off the EnMAP lattice": 3,
        "METADATA.XML or STAC item disagrees with the image": 2,
        "corrupt raster data": 1,
        "missing or bad METADATA.XML": 1,
        "missing or bad quality layers": 1,
        "no valid pixels": 1,
        "superseded by a newer processor version": 1,
        "truncated file": 1,
        "unreadable": 1,
        "unsafe archive member": 5,
        "wrong band count": 2,
        "wrong data type": 1,
    }


def test_truncated_cog(summary: dict[str, Any], bad_archive: Path) -> None:
    reason = rejected(summary, 9101, "file is truncated", "truncated file")
    assert reason.startswith(f"{bad_archive / product(9101) / product(9101)}-SPECTRAL_IMAGE_COG.TIF: ")


def test_corrupt_cog(summary: dict[str, Any], bad_archive: Path) -> None:
    reason = rejected(summary, 9102, "data is corrupt", "corrupt raster data")
    assert reason.startswith(f"{bad_archive / product(9102) / product(9102)}-SPECTRAL_IMAGE_COG.TIF: ")
    assert "IReadBlock failed at X offset 1, Y offset 1" in reason and "Decoding error" in reason
    # A header that is not a TIFF any more: GDAL's own words, naming the file.
    rejected(summary, 9119, f"{product(9119)}-SPECTRAL_IMAGE_COG.TIF' not recognized", "unreadable")


def test_corrupt_block_beyond_band_1(example: Example, bad_archive: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    os.link(example.archive / E_PLAN.path, archive / E_PLAN.path.name)
    folder = _copy_of_e(bad_archive.parent / "outside" / E_NAME, archive, 9120)
    cube, _ = _e_cube(bad_archive.parent / "outside" / E_NAME)
    _write_image(folder, cube, compress="deflate", tiled=True, blockxsize=128, blockysize=128)  # DLR's are raw
    image = _file(folder, "image")
    data = bytearray(image.read_bytes())
    _garbage_in_block(image, band=100, at=0.0)(data)  # the deflate stream's header: decoding fails
    _fresh(image).write_bytes(bytes(data))
    scenes = CorpusReader(build(archive, tmp_path / "corpus")).table("scenes").set_index("product")
    assert scenes.loc[E_NAME, "n_observations"] == 4  # E alone: its four cells
    assert scenes.loc[product(9120), "status"] == "rejected"
    assert scenes.loc[product(9120), "reason"].startswith(f"{image}: ")


def test_wrong_dtype(summary: dict[str, Any]) -> None:
    reason = rejected(summary, 9103, "spectral image dtype float32, expected int16", "wrong data type")
    assert product(9103) in reason


def test_wrong_band_count(summary: dict[str, Any], bad_archive: Path) -> None:
    reason = rejected(summary, 9104, "spectral image has 200 bands, expected 224", "wrong band count")
    assert product(9104) in reason
    reason = rejected(summary, 9109, "product has 202 bands (202 characterised in METADATA.XML)", "wrong band count")
    assert reason.startswith(f"{bad_archive / product(9109)}: ") and reason.endswith("L2A products have 224")


def test_missing_quality_layer(summary: dict[str, Any]) -> None:
    rejected(summary, 9105, "missing quality layer(s) quality_cloud", "missing or bad quality layers")


def test_malformed_metadata(summary: dict[str, Any], bad_archive: Path) -> None:
    reason = rejected(summary, 9106, "METADATA.XML is not well-formed XML", "missing or bad METADATA.XML")
    assert reason.startswith(f"{bad_archive / product(9106)}: ")


@pytest.mark.parametrize(
    ("datatake", "difference"),
    [
        (9107, "projection UTM_Zone32_North in METADATA.XML, UTM_Zone33_North in the image"),
        (9108, "width 300 in METADATA.XML, 296 in the image; height 290 in METADATA.XML, 296 in the image"),
    ],
)
def test_metadata_disagreeing_with_the_image(summary: dict[str, Any], datatake: int, difference: str) -> None:
    group = "METADATA.XML or STAC item disagrees with the image"
    reason = rejected(summary, datatake, "METADATA.XML disagrees with the image: ", group)
    assert reason.endswith(f"-SPECTRAL_IMAGE.TIF: METADATA.XML disagrees with the image: {difference}")
    assert product(datatake) in reason


@pytest.mark.parametrize(
    ("datatake", "text"),
    [
        (9110, "are off the EnMAP lattice (x = y = 15 mod 30 m); resampling is never done"),
        (9111, "is not a north-up 30 m grid"),
    ],
)
def test_geotransform_off_the_lattice_or_rotated(summary: dict[str, Any], datatake: int, text: str) -> None:
    reason = rejected(summary, datatake, text, "CRS or grid off the EnMAP lattice")
    assert product(datatake) in reason


def test_geographic_crs(summary: dict[str, Any]) -> None:
    reason = rejected(summary, 9112, "CRS EPSG:4326 is not a projected UTM CRS", "CRS or grid off the EnMAP lattice")
    assert product(9112) in reason


def test_all_nodata_scene(summary: dict[str, Any]) -> None:
    reason = rejected(summary, 9113, "no valid pixels (the whole scene is nodata)", "no valid pixels")
    assert product(9113) in reason


def test_unsafe_zip_members(summary: dict[str, Any]) -> None:
    rejected(summary, 9114, "unsafe ZIP member '../evil.txt'", "unsafe archive member")
    rejected(summary, 9115, "unsafe ZIP member '/tmp/evil.txt'", "unsafe archive member")
    name = product(9116)
    link = f"unsafe ZIP member '{name}/passwd.TXT': a symbolic link (to '/etc/passwd')"
    rejected(summary, 9116, link, "unsafe archive member")


def test_symlinks_leaving_the_archive(summary: dict[str, Any]) -> None:
    name = product(9117)
    rejected(
        summary, 9117, f"symlink '{name}-QL_PIXELMASK.TIF' resolves outside the archive root", "unsafe archive member"
    )
    rejected(summary, 9118, f"symlink '{product(9118)}' resolves outside the archive root", "unsafe archive member")


# --- empty searches and STAC API faults ------------------------------------------------------------


def test_empty_search_result_stops_with_a_clear_error(
    stac_url: str, bad_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "none"
    argv = ["build", "--source", stac_url, "--out", str(out), "--bbox", "-150", "-40", "-149", "-39", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spectral-corpus build: error: {stac_url} has no scenes matching the query ")
    assert "'bbox': [-150.0, -40.0, -149.0, -39.0]" in err
    assert not (out / "CURRENT").exists()
    with pytest.raises(BuildError, match="has no scenes matching the query"):
        build_corpus(
            BuildOptions(
                source=str(bad_archive),
                out=tmp_path / "later",
                query=SceneQuery.from_options(start="2030-01-01"),
                rules=Rules(),
            )
        )


def test_empty_search_result_leaves_no_work_state(stac_url: str, tmp_path: Path) -> None:
    out = tmp_path / "none"
    assert main(["build", "--source", stac_url, "--out", str(out), "--start", "2030-01-01", "--quiet"]) == 2
    # Else a corrected command fails with "holds an interrupted run with other options", and the
    # same command later reuses the empty scene table saved in _build/scenes.parquet.
    assert not (out / "_build").exists()


@pytest.fixture
def proxy(stac_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(stac_url) as running:
        yield running


@pytest.fixture
def fast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's retry policy: 3 tries, no backoff, waits up to 0.25 s, 5 s per request."""
    monkeypatch.setenv(RETRIES_ENV, "2")
    monkeypatch.setenv(BACKOFF_ENV, "0")
    monkeypatch.setenv(MAX_WAIT_ENV, "0.25")
    monkeypatch.setenv(TIMEOUT_ENV, "5")


def test_stac_500_gives_up_after_bounded_retries(
    proxy: FaultProxy, fast_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy.inject(Fault(500))
    out = tmp_path / "corpus"
    assert main(["build", "--source", proxy.url, "--out", str(out), "--quiet"]) == 2
    assert proxy.outcomes() == ["HTTP 500"] * 3
    err = capsys.readouterr().err
    assert err.startswith(f"spectral-corpus build: error: STAC API {proxy.url} answered HTTP 500 after 3 attempts: ")
    assert "injected by FaultProxy" in err  # the server's own words
    assert not (out / "CURRENT").exists()


def test_stac_429_honours_retry_after_within_the_cap_then_gives_up(proxy: FaultProxy) -> None:
    proxy.inject(Fault(429, retry_after="1"), first=1)
    started = time.monotonic()
    records = search_stac_api(proxy.url, SceneQuery(), policy=replace(FAST, max_wait_s=5.0))
    assert time.monotonic() - started >= 1.0  # waited what Retry-After said, not the zero backoff
    assert len(records) == 6 and proxy.outcomes()[:2] == ["HTTP 429", "forwarded"]

    proxy.inject(Fault(429, retry_after="30"))
    started = time.monotonic()
    with pytest.raises(Exception, match=f"STAC API {proxy.url} answered HTTP 429 after 3 attempts") as caught:
        search_stac_api(proxy.url, SceneQuery(), policy=FAST)
    assert time.monotonic() - started < 5  # Retry-After: 30 capped at 0.25 s per wait
    assert getattr(caught.value, "status", None) == 429
    assert proxy.outcomes() == ["HTTP 429"] * 3


def test_stac_hanging_search_times_out_after_bounded_retries(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(RETRIES_ENV, "1")
    monkeypatch.setenv(BACKOFF_ENV, "0")
    monkeypatch.setenv(TIMEOUT_ENV, "0.3")
    proxy.inject(Fault(hang_s=10, path="/search"))
    started = time.monotonic()
    assert main(["build", "--source", proxy.url, "--out", str(tmp_path / "corpus"), "--quiet"]) == 2
    assert time.monotonic() - started < 5
    assert [(r.method, r.path.split("?")[0], r.outcome) for r in proxy.requests][-2:] == [
        ("POST", "/search", "hang")
    ] * 2
    err = capsys.readouterr().err
    assert f"error: STAC API {proxy.url} could not be reached after 2 attempts: " in err
    assert "Read timed out. (read timeout=0.3)" in err


def test_transient_503_still_gives_the_full_corpus(
    proxy: FaultProxy, fast_env: None, bad_corpus: Path, tmp_path: Path
) -> None:
    proxy.inject(Fault(503, retry_after="0"), first=2)
    out = build(proxy.url, tmp_path / "corpus")
    assert proxy.outcomes()[:3] == ["HTTP 503", "HTTP 503", "forwarded"]
    summary = corpus_summary(CorpusReader(out))
    assert {k: summary[k] for k in EXPECTED} == EXPECTED
    # The same observations and pixels as the archive build among the bad products.
    columns = ["obs", "location_id", "scene_id", "split", "product", "epsg", "ix", "iy", "row", "col", "frac_cloud"]
    got, want = CorpusReader(out), CorpusReader(bad_corpus)
    pd.testing.assert_frame_equal(got.table("observations")[columns], want.table("observations")[columns])
    np.testing.assert_array_equal(np.asarray(got.patches[:]), np.asarray(want.patches[:]))


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_reported_at_once(
    proxy: FaultProxy, status: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "tok-" + "x" * 20
    monkeypatch.setenv(TOKEN_ENV, token)
    monkeypatch.setenv(BACKOFF_ENV, "0")
    proxy.inject(Fault(status))
    assert main(["build", "--source", proxy.url, "--out", str(tmp_path / "corpus"), "--quiet"]) == 2
    assert proxy.count == 1  # never retried
    assert proxy.requests[0].headers.get("Authorization") == f"Bearer {token}"
    err = capsys.readouterr().err
    assert f"STAC API {proxy.url} refused the credentials (HTTP {status}; sent: a bearer token from {TOKEN_ENV})" in err
    assert token not in err


def test_bad_retry_setting_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    assert main(["build", "--source", "http://127.0.0.1:9/", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert f"error: {TIMEOUT_ENV}='soon' is not a positive number" in capsys.readouterr().err


# --- paths that are not (readable) corpora ---------------------------------------------------------


def _commands(path: Path, source: Path) -> list[list[str]]:
    return [
        ["info", str(path)],
        ["verify", str(path)],
        ["versions", str(path)],
        ["extend", "--corpus", str(path), "--source", str(source), "--quiet"],
    ]


def test_a_path_that_is_not_a_corpus(bad_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (bad_archive, tmp_path / "missing"):
        for argv in _commands(path, bad_archive):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err == f"spectral-corpus {argv[0]}: error: {path} is not a corpus: corpus.json is missing\n"


def test_bad_options_and_unwritable_places_are_one_line_errors(
    bad_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build = ["build", "--source", str(bad_archive), "--quiet", "--out"]
    for argv, expected in (
        ([*build, str(tmp_path / "c"), "--start", "notadate"], "'notadate' is not an ISO 8601 date or time"),
        ([*build, str(tmp_path / "c"), "--aoi", str(tmp_path / "none.geojson")], "AOI file '"),
        ([*build, "/proc/none/corpus"], "/proc/none/corpus cannot be written: No such file or directory"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"spectral-corpus build: error: {expected}") and err.count("\n") == 1, err


def test_extend_of_a_missing_corpus_creates_nothing(bad_archive: Path, tmp_path: Path) -> None:
    assert main(["extend", "--corpus", str(tmp_path / "typo"), "--source", str(bad_archive), "--quiet"]) == 2
    assert not (tmp_path / "typo").exists()


def test_a_corpus_of_a_newer_format_version(
    bad_corpus: Path, bad_archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = tmp_path / "newer"
    shutil.copytree(bad_corpus, newer, copy_function=os.link)
    metadata = json.loads((bad_corpus / "corpus.json").read_text())
    assert metadata["format_version"] == FORMAT_VERSION
    _fresh(newer / "corpus.json").write_text(json.dumps({**metadata, "format_version": FORMAT_VERSION + 1}))
    expected = (
        f"{newer} was written in format version {FORMAT_VERSION + 1}; this software reads versions "
        f"{OLDEST_READABLE} to {FORMAT_VERSION}: upgrade spectral-corpus"
    )
    with pytest.raises(FormatError, match=re.escape(expected)):
        CorpusReader(newer)
    for argv in _commands(newer, bad_archive):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == f"spectral-corpus {argv[0]}: error: {expected}\n"
    assert json.loads((bad_corpus / "corpus.json").read_text()) == metadata  # the original is intact


def test_stac_item_disagreeing_with_the_image(example: Example) -> None:
    item = next(i for i in json.loads(example.stac_items.read_text())["features"] if i["id"] == E_NAME)
    del item["assets"]["metadata"]  # the record is then made from the item's own fields
    record = record_from_item(item, "items.json")
    assert record.described_by == "STAC item" and record.epsg is None  # E's item states no CRS
    result = inspect_scene(replace(record, epsg=32632, width=300))
    assert result.status == "rejected"
    assert result.reason.endswith(
        "-SPECTRAL_IMAGE.TIF: STAC item disagrees with the image: projection EPSG:32632 in STAC item, "
        "EPSG:32633 in the image; width 300 in STAC item, 296 in the image"
    )
    assert result.rejection == Rejection.CATALOG_DISAGREES
    assert result.rejection.label == "METADATA.XML or STAC item disagrees with the image"
