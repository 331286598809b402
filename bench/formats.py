"""The streaming formats ML users would pick instead of the corpus, over the same patches: write and read.

``python -m bench`` (``bench/suite.py``) writes each format from the corpus, times its usual loader and
checks its pixels against ``PatchLoader``'s. Every format stores the same observations, each as one int16
(C, H, W) sample with its obs id, in shards of ``SAMPLES_PER_SHARD`` samples (WebDataset tars, LitData
chunks, MDS shards alike; the corpus itself has shards of 32), and every loader delivers batches as dicts
with ``image`` (int16, B x C x H x W, as ``PatchLoader`` delivers raw counts) and ``obs`` (int64):

- **WebDataset** (``webdataset``): ``<obs>.npy`` in tar shards, read by ``WebDataset(...).decode()
  .to_tuple(...).batched(B)`` in a ``DataLoader(batch_size=None)``; shards split over the workers and read
  in order (``loader_throughput.py``'s pipeline, its best case: no shuffle). No compression of its own.
- **LitData** (``litdata``): ``litdata.optimize(fn, inputs, chunk_size=16, compression=None | "zstd")``;
  read by ``StreamingDataset(dir, shuffle=True)`` and ``StreamingDataLoader``. With ``"zstd"`` LitData's
  default ``compression_level`` applies ("batch": zstd frames inside each chunk file, inflated in
  memory by the reader).
- **MosaicML Streaming** (``mosaicml-streaming``): ``MDSWriter(columns={"obs": "int", "image":
  "ndarray:int16:C,H,W"}, compression=None | "zstd")``; read by ``StreamingDataset(local=..., shuffle=True,
  batch_size=B)`` and its ``StreamingDataLoader``. MDS compression is for storage and transfer: the
  reader inflates each ``.mds.zstd`` shard once into a raw ``.mds`` file in its local cache (a second
  folder here, as if the compressed shards were remote) and then reads that, so its steady state
  reads raw files. The cache's bytes are recorded next to the stored bytes.

Installing them: ``bash bench/install.sh`` (both pin torch-replacing dependencies; see bench/README.md).
MosaicML Streaming's top-level package imports ``streaming.vision`` (torchvision) and ``streaming.text``
for its dataset zoo; :func:`mosaic_streaming` loads only ``streaming.base`` (writer, dataset, loader),
because the PyPI torchvision wheels are CUDA builds that do not import next to the CPU torch.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_corpus.pipeline.reader import CorpusReader

#: Samples per tar shard / LitData chunk / MDS shard (16 patches of 202 x 128 x 128 int16: 106 MB).
SAMPLES_PER_SHARD = 16

Batches = Iterable[dict[str, Any]]


def folder_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def close_loader(loader: Any) -> None:
    """Stop a DataLoader's persistent workers now (not when the garbage collector gets to it).

    A forked worker of the next loader would otherwise inherit the old iterator and try to stop its
    workers from the wrong process.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None
    gc.collect()


# --- reading the corpus's patches (the source of every format) -----------------------------------------------------

_READERS: dict[str, CorpusReader] = {}


def read_sample(corpus: str, obs: int) -> dict[str, Any]:
    """One sample, ``{"obs": obs, "image": int16 (C, H, W)}``, read with ``CorpusReader`` (one per process)."""
    reader = _READERS.get(corpus)
    if reader is None:
        reader = _READERS[corpus] = CorpusReader(Path(corpus))
    return {"obs": int(obs), "image": np.ascontiguousarray(reader.read_patch(int(obs)))}


# --- the formats ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """A competitor: how to write the samples into ``root``, and how its users read them back.

    ``loader(root, workers, batch_size)`` gives an iterable of batches (persistent workers when
    workers > 0); ``compression`` is the format's own codec (None: raw int16 plus framing);
    ``cache_dir`` (MDS with compression): where its reader keeps the inflated shards, under ``root``'s parent.
    """

    name: str
    label: str
    library: str
    compression: str | None
    write: Callable[[Path, str, Sequence[int]], None]
    loader: Callable[[Path, int, int], Any]
    cache_dir: Callable[[Path], Path] | None = None


def available() -> dict[str, str]:
    """The installed competitor libraries and their versions (``python -m bench`` needs all three)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("webdataset", "litdata", "mosaicml-streaming"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def formats() -> list[Format]:
    """Every competitor format, each without and (where it has one) with its own compression."""
    return [
        Format("webdataset_npy", "WebDataset, `.npy` in tars", "webdataset", None, write_webdataset, webdataset_loader),
        Format("litdata", "LitData", "litdata", None, partial(write_litdata, compression=None), litdata_loader),
        Format("litdata_zstd", "LitData, zstd", "litdata", "zstd", partial(write_litdata, compression="zstd"),
               litdata_loader),
        Format("mds", "MosaicML Streaming (MDS)", "mosaicml-streaming", None, partial(write_mds, compression=None),
               mds_loader),
        Format("mds_zstd", "MosaicML Streaming (MDS), zstd", "mosaicml-streaming", "zstd",
               partial(write_mds, compression="zstd"), mds_loader, mds_cache_dir),
    ]  # fmt: skip


# --- WebDataset (the pipeline of loader_throughput.py) -------------------------------------------------------------


def write_webdataset(root: Path, corpus: str, observations: Sequence[int]) -> None:
    """``<obs>.npy`` int16 samples in tar shards of ``SAMPLES_PER_SHARD``."""
    import loader_throughput

    if loader_throughput.WDS_SHARD != SAMPLES_PER_SHARD:
        raise RuntimeError("loader_throughput.WDS_SHARD and formats.SAMPLES_PER_SHARD differ")
    loader_throughput.write_webdataset(Path(corpus), root, observations)


def webdataset_loader(root: Path, workers: int, batch_size: int) -> Any:
    """``loader_throughput.webdataset_loader`` with the obs ids in the batches."""
    import loader_throughput

    return loader_throughput.webdataset_loader(root, workers, batch_size, with_obs=True)


# --- LitData -------------------------------------------------------------------------------------------------------


def write_litdata(root: Path, corpus: str, observations: Sequence[int], compression: str | None) -> None:
    """``litdata.optimize`` in one worker process (forked), chunks of ``SAMPLES_PER_SHARD`` samples."""
    import litdata

    shutil.rmtree(root, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        litdata.optimize(
            fn=partial(read_sample, corpus),
            inputs=[int(o) for o in observations],
            output_dir=str(root),
            chunk_size=SAMPLES_PER_SHARD,
            compression=compression,
            num_workers=1,
            reorder_files=False,
            start_method="fork",
            verbose=False,
        )


def litdata_loader(root: Path, workers: int, batch_size: int) -> Any:
    """``StreamingDataset(root, shuffle=True)`` in a ``StreamingDataLoader`` (its default collate)."""
    import litdata

    dataset = litdata.StreamingDataset(str(root), shuffle=True, seed=0)
    return litdata.StreamingDataLoader(
        dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0
    )


# --- MosaicML Streaming --------------------------------------------------------------------------------------------


def mosaic_streaming() -> types.ModuleType:
    """``streaming.base`` (``MDSWriter``, ``StreamingDataset``, ``StreamingDataLoader``) without ``streaming/__init__``.

    The package's ``__init__`` also imports its dataset zoo (``streaming.vision`` needs torchvision, whose
    PyPI wheels are CUDA builds that fail to import beside the CPU torch). The package is registered
    as a bare namespace over its own folder, so ``streaming.base`` and everything it imports load as
    shipped; nothing is stubbed. Data loader workers are forked and inherit it.
    """
    loaded = sys.modules.get("streaming")
    if loaded is None or not hasattr(loaded, "__path__"):
        spec = importlib.util.find_spec("streaming")
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError("mosaicml-streaming is not installed: bash bench/install.sh")
        package = types.ModuleType("streaming")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["streaming"] = package
    import streaming.base

    return streaming.base


def mds_columns(shape: Sequence[int]) -> dict[str, str]:
    """MDS column encodings: the obs id and a fixed-shape int16 array."""
    return {"obs": "int", "image": "ndarray:int16:" + ",".join(str(int(n)) for n in shape)}


def write_mds(root: Path, corpus: str, observations: Sequence[int], compression: str | None) -> None:
    """``MDSWriter`` with shards of ``SAMPLES_PER_SHARD`` samples (``size_limit`` set to fit exactly that many)."""
    base = mosaic_streaming()
    shutil.rmtree(root, ignore_errors=True)
    first = read_sample(corpus, observations[0])
    shape = first["image"].shape
    per_sample = first["image"].nbytes + 64  # the obs int64, the offset and some slack
    size_limit = SAMPLES_PER_SHARD * per_sample
    with base.MDSWriter(
        out=str(root), columns=mds_columns(shape), compression=compression, size_limit=size_limit
    ) as writer:
        for obs in observations:
            writer.write(read_sample(corpus, obs))


def mds_cache_dir(root: Path) -> Path:
    """Where an MDS reader inflates compressed shards (its ``local``; ``root`` is its ``remote``)."""
    return root.parent / f"{root.name}-local"


def mds_loader(root: Path, workers: int, batch_size: int) -> Any:
    """``StreamingDataset(local, shuffle=True, batch_size=B)`` in its ``StreamingDataLoader``.

    Raw shards are read in place; compressed ones through a local cache (:func:`mds_cache_dir`).
    """
    base = mosaic_streaming()
    compressed = any(p.suffix == ".zstd" for p in root.iterdir())
    local, remote = (mds_cache_dir(root), root) if compressed else (root, None)
    dataset = base.StreamingDataset(
        local=str(local),
        remote=None if remote is None else str(remote),
        shuffle=True,
        shuffle_seed=0,
        batch_size=batch_size,
    )
    return base.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)


def clean_mds_shared_memory() -> None:
    """Remove shared memory that a killed MDS reader left behind (it refuses to start otherwise)."""
    base = mosaic_streaming()
    from streaming.base.util import clean_stale_shared_memory

    del base
    clean_stale_shared_memory()


def quiet_library_warnings() -> None:
    """Silence the competitors' chatter that does not change what is measured.

    MDS hands torch read-only arrays (torch warns that they are not writable; nothing writes them), and
    LitData nags about an account and its cache size.
    """
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    warnings.filterwarnings("ignore", module="litdata")
    warnings.filterwarnings("ignore", module="streaming")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_timed(fmt: Format, root: Path, corpus: Path, observations: Sequence[int]) -> float:
    """Write ``fmt`` into ``root`` (replacing it); return the seconds it took."""
    started = time.perf_counter()
    fmt.write(root, str(corpus), [int(o) for o in observations])
    if fmt.cache_dir is not None:
        shutil.rmtree(fmt.cache_dir(root), ignore_errors=True)
    return time.perf_counter() - started


def image_checksums(batches: Batches) -> dict[int, list[str]]:
    """Per obs id, the SHA-1 of each int16 image delivered (float32 images must hold integer counts).

    Lists, so that an observation delivered twice is seen.
    """
    import hashlib

    sums: dict[int, list[str]] = {}
    for batch in batches:
        images, obs = batch["image"], batch["obs"]
        if isinstance(images, torch.Tensor):
            images = images.numpy()
        images = np.asarray(images)
        if images.dtype == np.float32:
            counts = images.astype(np.int16)
            if not np.array_equal(counts.astype(np.float32), images):
                raise AssertionError("a float32 batch does not hold integer counts")
            images = counts
        elif images.dtype != np.int16:
            raise AssertionError(f"images arrive as {images.dtype}, not int16")
        for o, image in zip(np.asarray(obs).tolist(), images, strict=True):
            digest = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
            sums.setdefault(int(o), []).append(digest)
    return sums
