"""Codec choice: lossless ratio and single-thread encode/decode speed of candidate codecs on the corpus's patches.

Run from the repository root::

    python bench/codec_choice.py [--corpus CORPUS | --replicas 1] [--out bench/results/codecs.jsonl]

Every patch of the corpus (one Zarr inner chunk: 202 x 128 x 128 int16) is encoded and decoded whole
by each candidate, in one thread (Blosc's internal threads off), and checked to round-trip exactly.
Without ``--corpus`` a corpus is built once from the cached example products (see
``build_throughput.py``). Named ``codec_choice`` rather than ``codecs`` so it never shadows the
standard library's ``codecs`` module when run as a script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
from build_throughput import DEFAULT_CACHE, MB, cached_corpus, machine, single_threaded_blosc

from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.store import PATCH_COMPRESSOR

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], np.ndarray]


@dataclass(frozen=True)
class Candidate:
    """A named lossless encoding of one (band, y, x) int16 patch."""

    name: str
    zarr_v3: str
    encode: Encode
    decode: Decode


def _blosc(cname: str, clevel: int, shuffle: int) -> numcodecs.Blosc:
    return numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=shuffle, typesize=2)


def plain(codec: numcodecs.abc.Codec, shape: tuple[int, ...]) -> tuple[Encode, Decode]:
    """Encode the patch's bytes as they are (C order, band-major)."""
    return (lambda a: bytes(codec.encode(a))), (lambda b: np.frombuffer(codec.decode(b), "<i2").reshape(shape))


def band_delta(codec: numcodecs.abc.Codec, shape: tuple[int, ...]) -> tuple[Encode, Decode]:
    """Pixel-interleave the patch (y, x, band), take differences along the band axis, then encode.

    This is what a Zarr v3 ``transpose`` codec (order y, x, band) followed by a numcodecs ``delta``
    filter stores; int16 differences wrap around, so it stays lossless.
    """
    bands, height, width = shape

    def encode(a: np.ndarray) -> bytes:
        interleaved = np.ascontiguousarray(a.transpose(1, 2, 0)).reshape(-1, bands)
        delta = np.diff(interleaved, axis=1, prepend=np.int16(0))
        return bytes(codec.encode(delta))

    def decode(b: bytes) -> np.ndarray:
        delta = np.frombuffer(codec.decode(b), "<i2").reshape(-1, bands)
        interleaved = np.cumsum(delta, axis=1, dtype=np.int16)
        return interleaved.reshape(height, width, bands).transpose(2, 0, 1)

    return encode, decode


def plane_delta(codec: numcodecs.abc.Codec, shape: tuple[int, ...]) -> tuple[Encode, Decode]:
    """Keep the band-major layout and replace each band plane by its difference to the previous band.

    No Zarr v3 or numcodecs codec does this today: it would need a small custom array-to-array codec.
    """

    def encode(a: np.ndarray) -> bytes:
        return bytes(codec.encode(np.diff(a, axis=0, prepend=np.zeros((1, *shape[1:]), np.int16))))

    def decode(b: bytes) -> np.ndarray:
        planes = np.frombuffer(codec.decode(b), "<i2").reshape(shape).copy()
        for band in range(1, shape[0]):  # a running sum, one plane at a time (np.cumsum on axis 0 is slower)
            np.add(planes[band], planes[band - 1], out=planes[band])
        return planes

    return encode, decode


def candidates(shape: tuple[int, ...]) -> list[Candidate]:
    """The codecs compared; the first is the corpus's ``PATCH_COMPRESSOR``."""
    shuffle, bitshuffle = numcodecs.Blosc.SHUFFLE, numcodecs.Blosc.BITSHUFFLE
    current = f"blosc zstd {PATCH_COMPRESSOR.clevel} shuffle (current)"
    specs: list[tuple[str, str, tuple[Encode, Decode]]] = [
        (current, "blosc", plain(_blosc("zstd", PATCH_COMPRESSOR.clevel, shuffle), shape)),
        ("blosc zstd 1 shuffle", "blosc", plain(_blosc("zstd", 1, shuffle), shape)),
        ("blosc zstd 5 shuffle", "blosc", plain(_blosc("zstd", 5, shuffle), shape)),
        ("blosc zstd 3 bitshuffle", "blosc", plain(_blosc("zstd", 3, bitshuffle), shape)),
        ("blosc lz4 5 shuffle", "blosc", plain(_blosc("lz4", 5, shuffle), shape)),
        ("zstd 3 (no shuffle)", "zstd", plain(numcodecs.Zstd(level=3), shape)),
        ("zstd 1 (no shuffle)", "zstd", plain(numcodecs.Zstd(level=1), shape)),
        ("band delta + blosc zstd 3 shuffle", "transpose+numcodecs.delta+blosc",
         band_delta(_blosc("zstd", 3, shuffle), shape)),
        ("band delta + blosc zstd 1 shuffle", "transpose+numcodecs.delta+blosc",
         band_delta(_blosc("zstd", 1, shuffle), shape)),
        ("band-plane delta + blosc zstd 3 shuffle", "custom delta codec+blosc",
         plane_delta(_blosc("zstd", 3, shuffle), shape)),
        ("band-plane delta + blosc zstd 1 shuffle", "custom delta codec+blosc",
         plane_delta(_blosc("zstd", 1, shuffle), shape)),
    ]  # fmt: skip
    return [Candidate(name, spec, enc, dec) for name, spec, (enc, dec) in specs]


@dataclass
class CodecResult:
    """Ratio and best single-thread speeds of one candidate over all patches."""

    name: str
    zarr_v3: str
    ratio: float
    encode_mb_s: float
    decode_mb_s: float


def measure(candidate: Candidate, patches: Sequence[np.ndarray], repeats: int) -> CodecResult:
    """Encode and decode every patch ``repeats`` times; check the round trip; keep the best speeds."""
    raw = sum(p.nbytes for p in patches)
    encode_s, decode_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        blobs = [candidate.encode(p) for p in patches]
        encode_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        decoded = [candidate.decode(b) for b in blobs]
        decode_s.append(time.perf_counter() - started)
    if not all(np.array_equal(p, d) for p, d in zip(patches, decoded, strict=True)):
        raise AssertionError(f"{candidate.name} is not lossless")
    return CodecResult(
        name=candidate.name,
        zarr_v3=candidate.zarr_v3,
        ratio=round(sum(len(b) for b in blobs) / raw, 4),
        encode_mb_s=round(raw / MB / min(encode_s), 1),
        decode_mb_s=round(raw / MB / min(decode_s), 1),
    )


def load_patches(corpus: Path) -> list[np.ndarray]:
    """Every published patch of the corpus, as contiguous (band, y, x) int16 arrays."""
    reader = CorpusReader(corpus)
    obs = reader.table("observations")["obs"].to_numpy()
    return [np.ascontiguousarray(reader.read_patch(int(o))) for o in obs]


def format_table(results: Sequence[CodecResult], n_patches: int, raw_mb: float) -> str:
    """A Markdown table of the results."""
    lines = [
        f"{n_patches} patches, {raw_mb:.1f} MB raw int16, single thread",
        "",
        "| codec | Zarr v3 codecs | ratio (on disk / raw) | encode MB/s | decode MB/s |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r.name} | {r.zarr_v3} | {r.ratio} | {r.encode_mb_s} | {r.decode_mb_s} |" for r in results]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a built corpus (default: build one from cached products)")
    parser.add_argument("--replicas", type=int, default=1, help="example size when no --corpus (default: 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=Path("bench/results/codecs.jsonl"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Compare the candidates on the corpus's patches, append one JSON line to ``--out``, print a table."""
    args = _parser().parse_args(argv)
    corpus = args.corpus or cached_corpus(args.cache, args.replicas)
    patches = load_patches(corpus)
    with single_threaded_blosc():
        results = [measure(c, patches, args.repeats) for c in candidates(patches[0].shape)]
    raw_mb = sum(p.nbytes for p in patches) / MB
    row: dict[str, Any] = {
        **machine(),
        "corpus": str(corpus),
        "patches": len(patches),
        "raw_mb": round(raw_mb, 2),
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    print(format_table(results, len(patches), raw_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
