"""A corpus in an S3 bucket (a real S3-compatible server on 127.0.0.1) reads as the same corpus on disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import build
from s3_server import create_bucket, s3_server, upload
from spectral_corpus.catalog.synth import Example
from spectral_corpus.corpus_files import ObjectFiles, StorageConfigError, corpus_files
from spectral_corpus.corpus_format import PATCH_ARRAY, TABLES, shard_file_key
from spectral_corpus.pipeline.cli import main
from spectral_corpus.pipeline.info import corpus_summary
from spectral_corpus.pipeline.reader import CorpusReader, list_versions
from spectral_corpus.pipeline.verify import verify_corpus
from spectral_corpus.training import CorpusDataset, PatchLoader, ShardAwareSampler
from spectral_corpus.training.shards import PatchReader

BUCKET = "corpora"


@pytest.fixture(scope="module")
def bucket_corpus(corpus: Path) -> Iterator[str]:
    """The session corpus, copied file by file under ``s3://corpora/enmap/v1``."""
    with s3_server():
        create_bucket(BUCKET)
        yield upload(corpus, f"s3://{BUCKET}/enmap/v1")


def test_every_table_document_and_patch_reads_as_on_disk(bucket_corpus: str, corpus: Path) -> None:
    remote, local = CorpusReader(bucket_corpus), CorpusReader(corpus)
    assert isinstance(remote.files, ObjectFiles)
    assert remote.manifest == local.manifest and remote.metadata == local.metadata
    for name in TABLES:
        pd.testing.assert_frame_equal(remote.table(name), local.table(name), check_like=False)
    observations = local.table("observations")["obs"]
    assert len(observations) == 12
    for obs in observations:
        np.testing.assert_array_equal(remote.read_patch(int(obs)), local.read_patch(int(obs)))
    assert list_versions(bucket_corpus) == list_versions(corpus)
    assert verify_corpus(remote) == []
    assert {**corpus_summary(remote), "corpus": None} == {**corpus_summary(local), "corpus": None}


class _CountingFiles:
    """Counts the reads a PatchReader makes of the files it wraps."""

    def __init__(self, files: ObjectFiles) -> None:
        self.files, self.reads = files, []  # type: ignore[var-annotated]
        self.root = files.root

    def read_range(self, key: str, start: int, length: int) -> bytes:
        self.reads.append((key, start, length))
        return self.files.read_range(key, start, length)

    def size(self, key: str) -> int:
        return self.files.size(key)


def test_an_aws_profile_gives_the_keys(bucket_corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[research]\naws_access_key_id = profile-key\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_PROFILE", "research")
    assert CorpusReader(bucket_corpus).manifest.n_obs == 12  # with no keys at all, the store could not sign
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(StorageConfigError, match=r"^AWS_PROFILE='nobody': The config profile \(nobody\) could not"):
        CorpusReader(bucket_corpus)


def test_a_patch_is_one_ranged_read_after_its_shard_index(bucket_corpus: str, corpus: Path) -> None:
    reader = PatchReader(f"{bucket_corpus}/{PATCH_ARRAY}")
    counting = _CountingFiles(reader.files)  # type: ignore[arg-type]
    reader.files = counting  # type: ignore[assignment]
    local = CorpusReader(corpus)
    shards = local.table("shards")
    for obs in local.table("observations")["obs"]:
        np.testing.assert_array_equal(reader.read(int(obs)), local.read_patch(int(obs)))
    index_reads = [r for r in counting.reads if r[2] == 4 * 16 + 4]  # the index of a 4-patch shard, its CRC
    assert len(index_reads) == len(shards)  # one per shard, then cached
    assert len(counting.reads) == len(shards) + 12  # and one ranged read per patch
    patch_reads = [r for r in counting.reads if r not in index_reads]
    nbytes = {int(s): n for s, n in zip(shards["shard"], shards["nbytes"], strict=True)}
    assert all(length < nbytes[int(key.split("/")[1])] / 2 for key, _, length in patch_reads)  # never the shard


def test_the_loader_streams_the_same_batches_from_the_bucket(bucket_corpus: str, corpus: Path) -> None:
    batches = {}
    for root in (bucket_corpus, corpus):
        dataset = CorpusDataset(root, split=None, unit="location", views=2)
        sampler = ShardAwareSampler(dataset, seed=5)
        loader = PatchLoader(dataset, 2, sampler, num_workers=1)
        batches[str(root)] = [{k: v.clone() for k, v in batch.items()} for batch in loader]
    remote, local = batches[bucket_corpus], batches[str(corpus)]
    assert len(remote) == len(local) == 4  # 7 locations, batches of 2
    for got, want in zip(remote, local, strict=True):
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=0)


def test_the_command_line_reads_a_corpus_in_the_bucket(bucket_corpus: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", bucket_corpus]) == 0
    assert capsys.readouterr().out == f"{bucket_corpus} version 1: 3 shards and 12 observations verified\n"
    assert main(["info", bucket_corpus, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["corpus"] == bucket_corpus and info["observations"] == 12


def test_verify_names_a_corrupt_shard_in_the_bucket(bucket_corpus: str, corpus: Path) -> None:
    copy = upload(corpus, f"s3://{BUCKET}/enmap/corrupt")
    files = corpus_files(copy)
    assert isinstance(files, ObjectFiles)
    key = shard_file_key(1)
    data = bytearray(files.read(key))
    data[100] ^= 0xFF
    import obstore

    obstore.put(files.store, key, bytes(data))
    assert verify_corpus(CorpusReader(copy)) == [f"shard 1: checksum of {copy}/{key} differs from the shards table"]


def _in_bucket(href: str, archive: Path, products: str) -> str:
    """An asset href of the example's archive, moved to the same place under ``products`` in the bucket."""
    if href.startswith("/vsizip/"):
        return "/vsizip//vsis3/" + _in_bucket(href.removeprefix("/vsizip/"), archive, products).removeprefix("s3://")
    return products + "/" + Path(href).relative_to(archive).as_posix()


def test_products_in_a_bucket_build_the_same_corpus(
    bucket_corpus: str, example: Example, corpus: Path, tmp_path: Path
) -> None:
    products = upload(example.archive, f"s3://{BUCKET}/products")
    items = json.loads(example.stac_items.read_text())
    for item in items["features"]:
        for asset in item["assets"].values():
            asset["href"] = _in_bucket(asset["href"], example.archive, products)
    hrefs = [asset["href"] for item in items["features"] for asset in item["assets"].values()]
    assert all(href.startswith(("s3://", "/vsizip//vsis3/")) for href in hrefs)
    source = tmp_path / "items.json"
    source.write_text(json.dumps(items))
    built = build(source, tmp_path / "from-bucket", local_cluster=True)  # its workers see the S3 environment
    want, got = CorpusReader(corpus), CorpusReader(built)
    key = ["product", "epsg", "ix", "iy", "row", "col"]
    pd.testing.assert_frame_equal(got.table("observations")[key], want.table("observations")[key])
    np.testing.assert_array_equal(got.patches[:], want.patches[:])
    scenes = got.table("scenes").set_index("product")
    assert set(scenes.loc[scenes["status"] == "ok", "described_by"]) == {"METADATA.XML"}  # read from the bucket

