"""The work state of one build or extension run: what is done, kept so that a killed run resumes.

It lives in ``CORPUS/_build`` (in a temporary folder for a dry run), beside the corpus it writes, so
that it is wherever the corpus is (a local folder or a bucket) and every worker reaches it. One kind
of file per step:

```
options.json            the run's identity (version, source, query, rules): a resumed run must match it
scenes.parquet          the catalog step: the source's scene table, queried once
inspect/<product>.json  the inspect step: one result per inspected scene
shards/<n>.json         the materialize step: one marker per written shard (written by its task)
read_failures.json      products found unreadable while writing shards, rejected on re-planning
```

The plan is cheap and deterministic, so it is recomputed rather than kept. The folder is removed once
the version is published.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import geopandas as gpd
import pandas as pd

from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import read_scene_table, scene_table_bytes
from spectral_corpus.corpus_files import CorpusFiles
from spectral_corpus.corpus_format import BUILD, json_bytes
from spectral_corpus.pipeline.errors import BuildError
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS, InspectResult
from spectral_corpus.stages.materialize import SHARD_MARKERS

#: Product -> (rejection code, reason) of the scenes found unreadable while writing shards.
ReadFailures = dict[str, tuple[Rejection, str]]

_OPTIONS = f"{BUILD}/options.json"
_SCENES = f"{BUILD}/scenes.parquet"
_READ_FAILURES = f"{BUILD}/read_failures.json"


class WorkState:
    """The work state among ``files`` (under ``_build``): one method pair (read, record) per step."""

    def __init__(self, files: CorpusFiles) -> None:
        self.files = files

    @property
    def where(self) -> str:
        return f"{self.files.root}/{BUILD}"

    def identity(self) -> dict[str, Any] | None:
        """The identity of the run that started this state, if any."""
        data = self.files.read_tagged(_OPTIONS)[0]
        return json.loads(data) if data is not None else None

    def claim(self, identity: dict[str, Any]) -> None:
        """Start this state for a run, or resume it; refuse a state that another run's options started."""
        identity = json.loads(json.dumps(identity, default=str))
        started = self.identity()
        if started is None:
            self.files.write(_OPTIONS, json_bytes(identity))
        elif started != identity:
            raise BuildError(
                f"{self.where} holds an interrupted run with other options ({started}); "
                "re-run it with the same options, or remove that directory to start over"
            )

    def scenes(self) -> gpd.GeoDataFrame | None:
        """The catalog step's scene table, once recorded."""
        return read_scene_table(self.files, _SCENES) if self.files.exists(_SCENES) else None

    def record_scenes(self, table: gpd.GeoDataFrame) -> None:
        self.files.write(_SCENES, scene_table_bytes(table))

    def inspected(self) -> set[str]:
        """The products whose inspection is recorded (one listing, not one request per product)."""
        keys = self.files.list(f"{BUILD}/inspect")
        return {key.rsplit("/", 1)[-1].removesuffix(".json") for key in keys}

    @staticmethod
    def inspection_key(product: str) -> str:
        """Where the inspect task of ``product`` records its result."""
        return f"{BUILD}/inspect/{product}.json"

    def inspection(self, product: str) -> InspectResult:
        """The recorded inspection of ``product`` (FileNotFoundError if it was not inspected)."""
        return load_inspection(self.files, self.inspection_key(product))

    def read_failures(self) -> ReadFailures:
        data = self.files.read_tagged(_READ_FAILURES)[0]
        recorded = json.loads(data) if data is not None else {}
        return {product: (Rejection(code), reason) for product, (code, reason) in recorded.items()}

    def record_read_failures(self, failures: ReadFailures) -> None:
        """Add unreadable products, and forget every shard marker: the new shards are re-planned."""
        self.files.delete(f"{BUILD}/{SHARD_MARKERS}")  # first: no marker of the old plan may survive
        recorded = {**self.read_failures(), **failures}
        self.files.write(_READ_FAILURES, json_bytes({p: list(v) for p, v in recorded.items()}))

    def remove(self) -> None:
        self.files.delete(BUILD)


def save_inspection(result: InspectResult, files: CorpusFiles, key: str) -> None:
    """Record an inspection (run inside the inspect task, beside the other scenes')."""
    files.write(key, json_bytes({**asdict(result), "candidates": result.candidates.to_dict(orient="list")}))


def load_inspection(files: CorpusFiles, key: str) -> InspectResult:
    payload = json.loads(files.read(key))
    candidates = pd.DataFrame(payload.pop("candidates"), columns=CANDIDATE_COLUMNS)
    numeric = [c for c in CANDIDATE_COLUMNS if c != "product"]
    candidates[numeric] = candidates[numeric].astype("int64")
    code = payload.pop("rejection")
    return InspectResult(candidates=candidates, rejection=Rejection(code) if code else None, **payload)
