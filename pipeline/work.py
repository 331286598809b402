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
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import read_scene_table, scene_table_bytes
from spectral_corpus.corpus_files import CorpusFiles
from spectral_corpus.corpus_format import BUILD, json_bytes
from spectral_corpus.pipeline.errors import BuildError
from spectral_corpus.stages.inspect import CANDIDATE_COLUMNS, InspectResult
from spectral_corpus.stages.materialize import SHARD_MARKERS
from spectral_corpus.stages.plan import NARROW_COLUMNS, narrowest_ints

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

    def inspections(self, products: Sequence[str]) -> Inspections:
        """The recorded inspections of ``products``, in order, their candidates in one table (``load_inspections``)."""
        return load_inspections(self.files, [self.inspection_key(product) for product in products])

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


class Inspections(list[InspectResult]):
    """Inspection results whose candidates are consecutive slices of one table, ``candidates``."""

    def __init__(self, results: list[InspectResult], candidates: pd.DataFrame) -> None:
        super().__init__(results)
        self.candidates = candidates


def load_inspections(files: CorpusFiles, keys: Sequence[str]) -> Inspections:
    """The recorded inspections at ``keys``, in order, their candidates gathered into one table as a plan
    holds it (``stages.plan.compact``); each result's candidates are a slice of that table (a view).

    One small table per scene would cost a few kB of pandas objects beside its rows, a copy of the
    product's name on every row and 8 bytes for each count: several times what the rows hold.
    """
    gathered = _GatheredCandidates()
    found = []
    for key in keys:
        payload = json.loads(files.read(key))
        start = gathered.rows
        gathered.add(payload.pop("candidates"))
        code = payload.pop("rejection")
        found.append((payload, Rejection(code) if code else None, start, gathered.rows))
    table = gathered.table()
    results = [
        InspectResult(candidates=table.iloc[start:stop], rejection=rejection, **payload)
        for payload, rejection, start, stop in found
    ]
    return Inspections(results, table)


class _GatheredCandidates:
    """Candidate columns of many inspections, added scene by scene and kept in parts of narrow arrays."""

    #: Scenes whose rows are narrowed into one part at a time.
    PART_SCENES = 256
    NUMERIC = tuple(c for c in CANDIDATE_COLUMNS if c != "product")

    def __init__(self) -> None:
        self.rows = 0
        self.parts: dict[str, list[np.ndarray]] = {column: [] for column in CANDIDATE_COLUMNS}
        self._products: list[np.ndarray] = []
        self._numbers: list[np.ndarray] = []
        self._names: dict[str, str] = {}  # one Python string per product name

    def add(self, candidates: dict[str, list[Any]]) -> None:
        """Add one inspection's candidates (column -> values, as ``save_inspection`` records them)."""
        names = [self._names.setdefault(name, name) for name in candidates["product"]]
        self._products.append(np.array(names, dtype=object))
        numbers = np.array([candidates[column] for column in self.NUMERIC], dtype=np.int64)
        self._numbers.append(numbers.reshape(len(self.NUMERIC), len(names)))
        self.rows += len(names)
        if len(self._numbers) >= self.PART_SCENES:
            self._narrow_part()

    def _narrow_part(self) -> None:
        if not self._numbers:
            return
        numbers = np.concatenate(self._numbers, axis=1)
        for column, values in zip(self.NUMERIC, numbers, strict=True):
            part = narrowest_ints(values) if column in NARROW_COLUMNS else values
            self.parts[column].append(part.copy() if part.base is not None else part)  # not a view of numbers
        self.parts["product"].append(np.concatenate(self._products))
        self._numbers, self._products = [], []

    def table(self) -> pd.DataFrame:
        """All rows added, in order: ``product`` as shared strings, the narrow columns narrowed."""
        self._narrow_part()
        columns = {
            column: np.concatenate(parts) if parts else np.empty(0, object if column == "product" else np.int64)
            for column, parts in self.parts.items()
        }
        self.parts = {}
        columns["product"] = pd.Series(columns["product"], dtype=object)
        return pd.DataFrame(columns, columns=CANDIDATE_COLUMNS)
