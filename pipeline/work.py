"""The work state of one build or extension run: what is done, kept so that a killed run resumes.

It lives in ``CORPUS/_build`` (a temporary folder for a dry run), one kind of file per step:

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
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd

from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import read_scene_table, write_scene_table
from spectral_corpus.pipeline.errors import BuildError
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS, InspectResult
from spectral_corpus.stages.materialize import SHARD_MARKERS
from spectral_corpus.stages.store import write_json_atomic

#: Product -> (rejection code, reason) of the scenes found unreadable while writing shards.
ReadFailures = dict[str, tuple[Rejection, str]]


class WorkState:
    """The work state in ``folder``: one method pair (read, record) per step."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def started(self) -> bool:
        return self.folder.exists()

    def identity(self) -> dict[str, Any] | None:
        """The identity of the run that started this state, if any."""
        path = self.folder / "options.json"
        return json.loads(path.read_text()) if path.exists() else None

    def claim(self, identity: dict[str, Any]) -> None:
        """Start this state for a run, or resume it; refuse a state that another run's options started."""
        identity = json.loads(json.dumps(identity, default=str))
        started = self.identity()
        if started is None:
            write_json_atomic(self.folder / "options.json", identity)
        elif started != identity:
            raise BuildError(
                f"{self.folder} holds an interrupted run with other options ({started}); "
                "re-run it with the same options, or remove that directory to start over"
            )

    def scenes(self) -> gpd.GeoDataFrame | None:
        """The catalog step's scene table, once recorded."""
        path = self.folder / "scenes.parquet"
        return read_scene_table(path) if path.exists() else None

    def record_scenes(self, table: gpd.GeoDataFrame) -> None:
        write_scene_table(table, self.folder / "scenes.parquet")

    def inspection_file(self, product: str) -> Path:
        """Where the inspect task of ``product`` records its result."""
        return self.folder / "inspect" / f"{product}.json"

    def inspection(self, product: str) -> InspectResult:
        """The recorded inspection of ``product`` (FileNotFoundError if it was not inspected)."""
        return load_inspection(self.inspection_file(product))

    def read_failures(self) -> ReadFailures:
        path = self.folder / "read_failures.json"
        recorded = json.loads(path.read_text()) if path.exists() else {}
        return {product: (Rejection(code), reason) for product, (code, reason) in recorded.items()}

    def record_read_failures(self, failures: ReadFailures) -> None:
        """Add unreadable products, and forget every shard marker: the new shards are re-planned."""
        for marker in (self.folder / SHARD_MARKERS).glob("*.json"):  # first: no marker of the old plan may survive
            marker.unlink()
        recorded = {**self.read_failures(), **failures}
        write_json_atomic(self.folder / "read_failures.json", {p: list(v) for p, v in recorded.items()})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def save_inspection(result: InspectResult, path: Path) -> None:
    """Record an inspection (run inside the inspect task, beside the other scenes')."""
    write_json_atomic(path, {**asdict(result), "candidates": result.candidates.to_dict(orient="list")})


def load_inspection(path: Path) -> InspectResult:
    payload = json.loads(path.read_text())
    candidates = pd.DataFrame(payload.pop("candidates"), columns=CANDIDATE_COLUMNS)
    numeric = [c for c in CANDIDATE_COLUMNS if c != "product"]
    candidates[numeric] = candidates[numeric].astype("int64")
    code = payload.pop("rejection")
    return InspectResult(candidates=candidates, rejection=Rejection(code) if code else None, **payload)
