"""Loader from a bucket against the same loader on local disk, same run.

One corpus built from ``catalog.synth.write_example(seed, replicas)`` (cached, as the other benchmarks
do) is copied into a bucket of a local S3-compatible server (moto's server mode on 127.0.0.1, in a process
of its own, as in the tests). ``PatchLoader`` then reads every observation ``--passes`` times after an
untimed first pass (``unit="observation"``, raw int16 counts, shard-aware order, ``--workers`` persistent
workers: forked on disk, spawned for the bucket), from disk and from the bucket alternately, best of
``--repeats``. Reported: samples/s for both and their ratio, and the bytes the reader requests per patch
(the patch's own bytes) and per shard and worker (its index, once).

moto is a Python server that serves one ranged GET at about 90 MB/s here: the bucket figure is bound by
it, not by the loader, and says nothing of what a real object store delivers to many workers.

    python bench/loader_object_store.py [--replicas 4] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from build_throughput import DEFAULT_CACHE, cached_corpus

from s3_server import create_bucket, s3_server, upload
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.training import CorpusDataset, PatchLoader, ShardAwareSampler

RESULTS = Path(__file__).parent / "results" / "loader_object_store.jsonl"


def samples_per_second(root: str | Path, workers: int, passes: int) -> float:
    """Passes over every observation of the corpus at ``root`` after a first, untimed one (which starts
    the workers and reads the shard indexes); samples per second."""
    dataset = CorpusDataset(root, split=None, unit="observation", normalize=False)
    sampler = ShardAwareSampler(dataset, seed=0)
    loader = PatchLoader(dataset, 8, sampler, num_workers=workers, persistent_workers=True)
    for _ in loader:
        pass
    start, n = time.perf_counter(), 0
    for epoch in range(1, passes + 1):
        loader.set_epoch(epoch)
        for batch in loader:
            n += len(batch["obs"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3, help="timed passes after the warm-up pass")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    corpus = cached_corpus(args.cache, args.replicas)
    reader = CorpusReader(corpus)
    shards = reader.table("shards")
    with s3_server() as endpoint:
        create_bucket("bench")
        bucket = upload(corpus, "s3://bench/corpus")
        local, remote = [], []
        for _ in range(args.repeats):
            local.append(samples_per_second(corpus, args.workers, args.passes))
            remote.append(samples_per_second(bucket, args.workers, args.passes))
    n_obs = reader.manifest.n_obs
    row = {
        "benchmark": "loader_object_store",
        "replicas": args.replicas,
        "observations": n_obs,
        "shards": len(shards),
        "workers": args.workers,
        "timed_passes": args.passes,
        "local_samples_per_s": round(max(local), 1),
        "bucket_samples_per_s": round(max(remote), 1),
        "bucket_to_local": round(max(remote) / max(local), 3),
        "patch_bytes_per_patch": round(float(shards["nbytes"].sum()) / n_obs),
        "index_bytes_per_shard_per_worker": int(reader.rules["shard_size"]) * 16 + 4,
        "server": f"moto {endpoint}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
