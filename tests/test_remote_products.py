"""Products behind HTTP(S) that wants credentials (a real server on 127.0.0.1): read by range, with the
credentials of their own host only, never shown; a refusal stops the run at once, naming the host."""

from __future__ import annotations

import base64
import json
import logging
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio

from conftest import build
from http_server import ProductServer
from spectral_corpus.catalog.credentials import (
    HTTP_HOSTS_ENV,
    HTTP_PASSWORD_ENV,
    HTTP_TOKEN_ENV,
    HTTP_USER_ENV,
    host_credentials,
)
from spectral_corpus.catalog.errors import ProductAccessError, SourceError
from spectral_corpus.catalog.hrefs import forget_http_cache, open_raster
from spectral_corpus.catalog.query import SceneQuery
from spectral_corpus.catalog.retries import BACKOFF_ENV
from spectral_corpus.catalog.scenes import METADATA_XML, OK
from spectral_corpus.catalog.stac import read_static_stac, record_from_item
from spectral_corpus.catalog.synth import CLOUD, KEEP, SCENARIO, CellPlan, Event, write_scenes
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.grid import PATCH_PX
from spectral_corpus.stages.inspect import inspect_scene

USER = "ada"
#: Looked for, byte for byte, in every output and file: it must never show.
PASSWORD = "pw-" + secrets.token_hex(8)
TOKEN = "tok-" + secrets.token_hex(8)
_CLOUDY = (Event("cloud", 2000),)  # 12 % of a cell: dropped


def _cells(*fates: str) -> tuple[CellPlan, ...]:
    """Cells 00, 01, 10, 11 (row, column; 0 = north, west) kept or cloudy."""
    return tuple(CellPlan(i // 2, i % 2, fate, _CLOUDY if fate == CLOUD else ()) for i, fate in enumerate(fates))


#: Three scenes of which little is kept: P its northern row of cells, Q one southern cell (on another
#: date), R none (all cloudy; a ZIP, so its METADATA.XML and quality layers are read from a ZIP by range).
#: Their images are DLR's uncompressed strips (13 rows each), so strips under kept cells are what is read.
PLANS = (
    replace(SCENARIO[0], label="P", cells=_cells(KEEP, KEEP, CLOUD, CLOUD)),
    replace(SCENARIO[4], label="Q", cells=_cells(CLOUD, CLOUD, KEEP, CLOUD)),
    replace(SCENARIO[2], label="R", cells=_cells(CLOUD, CLOUD, CLOUD, CLOUD)),
)


@dataclass(frozen=True)
class Products:
    archive: Path
    items: list[dict[str, Any]]  # STAC items with local hrefs
    local_items: Path


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> Products:
    root = tmp_path_factory.mktemp("remote-products")
    items = write_scenes(root / "archive", PLANS)
    local = root / "local-items.json"
    local.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return Products(root / "archive", items, local)


@pytest.fixture(scope="module")
def server(products: Products) -> Iterator[ProductServer]:
    with ProductServer(products.archive, users={USER: PASSWORD}, tokens={TOKEN}) as running:
        yield running


@pytest.fixture(scope="module")
def local_corpus(products: Products, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus of the products read from disk (on the session's Dask cluster)."""
    return build(products.local_items, tmp_path_factory.mktemp("local") / "corpus")


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: ProductServer) -> None:
    """Basic credentials for the server's host only, no netrc, retries without waiting; a fresh count,
    and nothing of the server's files in GDAL's cache."""
    monkeypatch.delenv(HTTP_TOKEN_ENV, raising=False)
    monkeypatch.setenv(HTTP_USER_ENV, USER)
    monkeypatch.setenv(HTTP_PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(HTTP_HOSTS_ENV, "127.0.0.1")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv(BACKOFF_ENV, "0")
    server.accept({USER: PASSWORD}, {TOKEN})
    server.reset()
    for url in (server.url, server.url.replace("127.0.0.1", "localhost")):
        forget_http_cache(url)  # what GDAL read of it in this process, for another test


def behind(href: str, archive: Path, url: str) -> str:
    """A local asset href of ``archive`` as the same file at ``url`` (a ZIP member through ``/vsicurl/``)."""
    if href.startswith("/vsizip/"):
        return "/vsizip//vsicurl/" + behind(href.removeprefix("/vsizip/"), archive, url)
    return f"{url}/{Path(href).relative_to(archive.resolve()).as_posix()}"


def remote_items(products: Products, url: str, path: Path, drop: tuple[str, ...] = ()) -> Path:
    """The products' items with every href at ``url`` (asset keys ``drop`` left out), saved at ``path``."""
    items = json.loads(json.dumps(products.items))
    for item in items:
        item["assets"] = {
            key: {**asset, "href": behind(asset["href"], products.archive, url)}
            for key, asset in item["assets"].items()
            if key not in drop
        }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def leaks(folder: Path) -> list[str]:
    """Files under ``folder`` holding the password or the token (or the basic auth header of the password)."""
    needles = [PASSWORD.encode(), TOKEN.encode(), base64.b64encode(f"{USER}:{PASSWORD}".encode())]
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


# --- a build over products behind the server ------------------------------------------------------


def test_a_build_over_https_reads_a_fraction_and_gives_the_same_corpus(
    products: Products,
    server: ProductServer,
    local_corpus: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("spectral_corpus", "rasterio", "urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    source = remote_items(products, server.url, tmp_path / "items.json")
    built = build(source, tmp_path / "corpus", local_cluster=True)  # its workers see the credentials

    got, want = CorpusReader(built), CorpusReader(local_corpus)
    key = ["product", "epsg", "ix", "iy", "row", "col"]
    pd.testing.assert_frame_equal(got.table("observations")[key], want.table("observations")[key])
    assert len(got.table("observations")) == 3  # P's northern row, Q's one cell, none of R
    np.testing.assert_array_equal(got.patches[:], want.patches[:])
    scenes, local_scenes = got.table("scenes"), want.table("scenes")
    assert set(scenes["described_by"]) == {METADATA_XML}  # each METADATA.XML read over HTTP, R's from its ZIP
    same = [c for c in scenes.columns if c not in ("assets", "source")]
    pd.testing.assert_frame_equal(scenes[same], local_scenes[same])
    assert all(href.startswith(("http://", "/vsizip//vsicurl/http://")) for a in scenes["assets"] for _, href in a)

    # Never a whole file: every GET is ranged, and far less is read than the products hold.
    assert server.count(401) == 0
    assert all(r.range is not None for r in server.requests if r.method == "GET")
    sent = _bytes_per_file(server)
    total = sum(p.stat().st_size for p in products.archive.rglob("*") if p.is_file())
    ratio = server.bytes_sent / total
    figures = [f"read {server.bytes_sent} of the {total} bytes the products hold ({ratio:.3f})"]
    for plan in PLANS[:2]:  # an image is read only under its kept cells' rows, in the selected bands
        image = next((products.archive / plan.name).glob("*-SPECTRAL_IMAGE.TIF"))
        bound = _image_bound(image, got, plan.name)
        figures.append(f"{plan.label}: {sent[image.name]} of {image.stat().st_size} image bytes (bound {bound})")
        assert sent[image.name] <= bound
    read_whole = {
        n for n in sent if n.endswith(("-METADATA.XML", ".ZIP")) or "-QL_QUALITY" in n or "-QL_PIXELMASK" in n
    }
    assert set(sent) - read_whole == {f"{plan.name}-SPECTRAL_IMAGE.TIF" for plan in PLANS[:2]}  # never a quicklook
    zipped = next(products.archive.rglob("*.ZIP"))
    assert sent[zipped.name] < zipped.stat().st_size / 10  # R: its METADATA.XML, quality layers and first band
    assert ratio < 0.4  # 2 of 3 images, ~0.5 of each (rows of one cell row of two, strips and 16 KB granularity)

    # The credentials showed nowhere: not in output (the workers' too), logs or any file of the corpus.
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err + caplog.text and "Authorization" not in caplog.text
    assert leaks(built) == [] and leaks(tmp_path) == []
    with capfd.disabled():
        print("\n" + "\n".join(figures))


def _bytes_per_file(server: ProductServer) -> dict[str, int]:
    sent: dict[str, int] = {}
    for request in server.requests:
        name = request.path.rsplit("/", 1)[1]
        sent[name] = sent.get(name, 0) + request.nbytes
    return sent


#: What GDAL may read beyond the strips it needs: the TIFF header and strip tables on each opening (the
#: scene's 52 KB header and 2 x 224 x 23 table entries), and one 16 KB chunk at each end of a band's run
#: of strips (``CPL_VSIL_CURL_CHUNK_SIZE``).
_HEADER_BYTES = 128 * 1024
_CHUNK_BYTES = 16 * 1024


def _image_bound(image: Path, corpus: CorpusReader, product: str) -> int:
    """The most a build may read of a spectral image in DLR's strips: inspect's first band, then the strips
    under the window of the kept cells (one shard: one window) in each selected band; each opening its header."""
    observations = corpus.table("observations")
    rows = observations.loc[observations["product"] == product, "row"].astype(int)
    with rasterio.open(image) as dataset:
        strip_rows = dataset.block_shapes[0][0]
        strip_bytes = int(dataset.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
        n_strips = math.ceil(dataset.height / strip_rows)
    first, last = int(rows.min()) // strip_rows, (int(rows.max()) + PATCH_PX - 1) // strip_rows
    run = (last - first + 1) * strip_bytes + 2 * _CHUNK_BYTES
    n_bands = corpus.patches.shape[1]
    return 2 * _HEADER_BYTES + n_strips * strip_bytes + 2 * _CHUNK_BYTES + n_bands * run


# --- refusals ---------------------------------------------------------------------------------------


def test_a_wrong_password_stops_the_build_at_once_naming_the_host(
    products: Products,
    server: ProductServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="urllib3")
    wrong = "pw-wrong-" + secrets.token_hex(4)
    monkeypatch.setenv(HTTP_PASSWORD_ENV, wrong)
    source = remote_items(products, server.url, tmp_path / "items.json")
    out = tmp_path / "corpus"

    assert main(["build", "--source", str(source), "--out", str(out), "--quiet"]) == 2

    assert [(r.method, r.status) for r in server.requests] == [("GET", 401)]  # the first METADATA.XML; no retry
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert line.startswith(
        f"spectral-corpus build: error: product host {server.netloc} refused the credentials "
        f"(HTTP 401; sent: user and password from {HTTP_USER_ENV} and {HTTP_PASSWORD_ENV}) for {server.url}/"
    )
    assert f"{HTTP_HOSTS_ENV}=127.0.0.1" in line
    assert wrong not in err + caplog.text and PASSWORD not in err
    assert not any(wrong.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_a_refused_image_read_stops_the_build_from_its_worker(
    products: Products,
    server: ProductServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """No METADATA.XML to read first: GDAL meets the 401 on a Dask worker, opening the image."""
    monkeypatch.setenv(HTTP_PASSWORD_ENV, "pw-stale")
    items = remote_items(products, server.url, tmp_path / "all.json", drop=("metadata",))
    one = json.loads(items.read_text())
    one["features"] = one["features"][:1]
    source = tmp_path / "items.json"
    source.write_text(json.dumps(one))

    assert main(["build", "--source", str(source), "--out", str(tmp_path / "corpus"), "--quiet"]) == 2

    assert [(r.method, r.status) for r in server.requests] == [("HEAD", 401)]  # GDAL's first request; no retry
    image = one["features"][0]["assets"]["image"]["href"]
    err = capfd.readouterr().err
    assert (
        f"error: product host {server.netloc} refused the credentials (HTTP 401; sent: user "
        f"and password from {HTTP_USER_ENV} and {HTTP_PASSWORD_ENV}) for {image}" in err
    )
    assert "pw-stale" not in err and leaks(tmp_path) == []
    assert not any(b"pw-stale" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def _record(products: Products, url: str, tmp_path: Path, label: str = "P") -> Any:
    """The scene record of product ``label`` with hrefs at ``url`` (its METADATA.XML not read)."""
    items = json.loads(remote_items(products, url, tmp_path / f"{label}.json").read_text())["features"]
    (item,) = [i for i in items if i["id"] == next(p.name for p in PLANS if p.label == label)]
    return record_from_item(item, "items.json")


def test_a_process_that_was_refused_reads_once_given_the_right_credentials(
    products: Products, server: ProductServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """GDAL remembers a 401 for the life of the process (a Dask worker, a notebook): it must forget it."""
    record = _record(products, server.url, tmp_path)
    monkeypatch.setenv(HTTP_PASSWORD_ENV, "pw-old")
    with pytest.raises(ProductAccessError) as refused:
        inspect_scene(record)
    assert (refused.value.host, refused.value.status) == (server.netloc, 401)
    monkeypatch.setenv(HTTP_PASSWORD_ENV, PASSWORD)
    assert inspect_scene(record).status == OK
    assert server.count(401) == 1


# --- which credentials go where -------------------------------------------------------------------


def test_a_bearer_token_is_sent_to_its_hosts(
    products: Products, server: ProductServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(HTTP_TOKEN_ENV, TOKEN)  # wins over the user and password
    source = remote_items(products, server.url, tmp_path / "items.json")
    records = read_static_stac(source, SceneQuery())
    assert [r.described_by for r in records] == [METADATA_XML] * 3
    assert inspect_scene(records[0]).status == OK
    assert {r.authorization for r in server.requests} == {f"Bearer {TOKEN}"}
    assert server.count(401) == 0


def test_credentials_go_to_their_own_hosts_only(
    products: Products, server: ProductServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same server reached as ``localhost`` is another host: it gets nothing, and says so."""
    elsewhere = server.url.replace("127.0.0.1", "localhost")
    record = _record(products, elsewhere, tmp_path)
    refusal = r"product host localhost:\d+ refused the credentials \(HTTP 401; sent: none\)"
    with pytest.raises(ProductAccessError, match=refusal):
        inspect_scene(record)
    source = remote_items(products, elsewhere, tmp_path / "items.json")
    with pytest.raises(ProductAccessError, match=r"localhost:\d+ .*sent: none"):
        read_static_stac(source, SceneQuery())
    assert {r.authorization for r in server.requests} == {None}

    monkeypatch.setenv(HTTP_HOSTS_ENV, "")
    with pytest.raises(SourceError, match=f"{HTTP_HOSTS_ENV} must list the hosts to send user and password from"):
        host_credentials(server.url)


def test_netrc_credentials_go_to_their_machine_only(
    products: Products, server: ProductServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (HTTP_USER_ENV, HTTP_PASSWORD_ENV, HTTP_HOSTS_ENV):
        monkeypatch.delenv(name)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    assert inspect_scene(_record(products, server.url, tmp_path)).status == OK
    assert server.count(401) == 0 and server.requests
    server.reset()
    with pytest.raises(ProductAccessError, match="sent: none"):
        inspect_scene(_record(products, server.url.replace("127.0.0.1", "localhost"), tmp_path))
    assert {r.authorization for r in server.requests} == {None}


def test_credentials_in_an_href_are_refused_without_showing_them(products: Products) -> None:
    item = json.loads(json.dumps(products.items[0]))
    item["assets"]["image"]["href"] = f"https://{USER}:{PASSWORD}@127.0.0.1/scene.TIF"
    with pytest.raises(SourceError, match=r"credentials in it \(https://\*\*\*@127\.0\.0\.1/scene\.TIF\)") as caught:
        record_from_item(item, "items.json")
    assert PASSWORD not in str(caught.value)


# --- retries ----------------------------------------------------------------------------------------


def test_429_and_5xx_are_retried_a_bounded_number_of_times(
    products: Products, server: ProductServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = remote_items(products, server.url, tmp_path / "items.json")
    server.fail(503, 429)
    records = read_static_stac(source, SceneQuery())  # METADATA.XML: requests' retries
    assert [r.described_by for r in records] == [METADATA_XML] * 3
    assert [r.status for r in server.requests[:3]] == [503, 429, 206]

    server.reset()
    server.fail(503, 429, 502)
    inspected = inspect_scene(records[0])
    assert inspected.status == OK, (inspected.reason, server.requests[:6])  # the image and its layers: GDAL's retries
    assert [r.status for r in server.requests[:4]] == [503, 429, 502, 200]

    monkeypatch.setenv("SPECTRAL_CORPUS_STAC_RETRIES", "1")  # 2 tries in all
    server.reset()
    server.fail(503, 503)
    refused, *fine = read_static_stac(source, SceneQuery())
    assert refused.status != OK and "HTTP 503" in refused.reason  # given up: that scene is rejected
    assert [r.status for r in fine] == [OK, OK] and server.count(503) == 2


def test_open_raster_maps_a_refusal_met_while_reading(
    products: Products, server: ProductServer, tmp_path: Path
) -> None:
    """Credentials that stop working between opening and reading (an expired token) stop the run too."""
    record = _record(products, server.url, tmp_path)
    with pytest.raises(ProductAccessError, match="HTTP 401"), open_raster(record.asset_map["image"]) as image:
        server.reset()
        server.accept({})  # from now on, nobody
        image.read(100)
    assert server.count(401) >= 1
