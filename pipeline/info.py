"""Summarise a corpus version: what was used, what each rule dropped, what was written."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from spectral_corpus.catalog.bands import N_BANDS, band_table
from spectral_corpus.catalog.rejections import Rejection
from spectral_corpus.catalog.scenes import OK
from spectral_corpus.pipeline.reader import CorpusReader
from spectral_corpus.stages.plan import DROP_REASONS


def rejection_label(code: str | None) -> str:
    """How the summaries name a rejection code (a scene table's ``rejection`` column)."""
    return Rejection(code if isinstance(code, str) and code else Rejection.UNRECORDED).label


def corpus_summary(reader: CorpusReader) -> dict[str, Any]:
    """The figures ``spectral-corpus info`` prints, as a JSON-ready dict."""
    scenes = reader.table("scenes")
    candidates = reader.table("candidates")
    observations = reader.table("observations")
    shards = reader.table("shards")
    stack = observations.groupby("location_id").size()
    rejected = scenes[scenes["status"] != OK]
    dropped = candidates["drop_reason"].value_counts()
    nbytes, raw = int(shards["nbytes"].sum()), int(shards["raw_bytes"].sum())
    return {
        "corpus": reader.files.root,
        "version": reader.version,
        "scenes": {
            "total": len(scenes),
            "used": int((scenes["status"] == OK).sum()),
            "rejected": len(rejected),
            "rejected_by_reason": rejected["rejection"].map(rejection_label).value_counts().sort_index().to_dict(),
            "rejected_scenes": dict(zip(rejected["product"], rejected["reason"], strict=True)),
            "rejected_as": dict(zip(rejected["product"], rejected["rejection"].map(rejection_label), strict=True)),
        },
        "candidates": len(candidates),
        "dropped": {reason: int(dropped.get(reason, 0)) for reason in DROP_REASONS},
        "locations": len(stack),
        "observations": len(observations),
        "multitemporal_locations": int((stack > 1).sum()),
        "longest_stack": int(stack.max()) if len(stack) else 0,
        "bands": int(reader.patches.shape[1]),
        "band_centre_deviation_nm": band_centre_deviation(scenes[scenes["status"] == OK]),
        "shards": len(shards),
        "bytes_on_disk": nbytes,
        "compression_ratio": round(nbytes / raw, 4) if raw else None,
    }


def band_centre_deviation(scenes: pd.DataFrame) -> dict[str, float | int] | None:
    """How far the scenes' own band centres lie from the nominal table (the corpus coordinate), in nm."""
    known = [np.asarray(c, float) for c in scenes.get("wavelengths_nm", []) if c is not None and len(c) == N_BANDS]
    if not known:
        return None
    offsets = np.abs(np.stack(known) - band_table()["center_nm"].to_numpy()).max(axis=1)
    return {"scenes": len(known), "median": round(float(np.median(offsets)), 3), "max": round(float(offsets.max()), 3)}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned text lines."""
    scenes = summary["scenes"]
    lines = [
        f"corpus                  {summary['corpus']} (version {summary['version']})",
        f"scenes                  {scenes['total']} found, {scenes['used']} used, {scenes['rejected']} rejected",
        *(f"  rejected: {group:<37} {count}" for group, count in scenes["rejected_by_reason"].items()),
        *(f"    {product}: {reason}" for product, reason in scenes["rejected_scenes"].items()),
        f"candidate observations  {summary['candidates']}",
        *(f"  dropped by {reason:<13} {count}" for reason, count in summary["dropped"].items()),
        f"locations               {summary['locations']}",
        f"observations            {summary['observations']}",
        f"multi-temporal          {summary['multitemporal_locations']} locations, longest stack "
        f"{summary['longest_stack']}",
        f"bands                   {summary['bands']}",
        _deviation_line(summary["band_centre_deviation_nm"]),
        f"shards                  {summary['shards']}",
        f"bytes on disk           {summary['bytes_on_disk']:,} (compression ratio {summary['compression_ratio']} "
        "of raw int16)",
    ]
    return "\n".join(lines)


def _deviation_line(deviation: dict[str, float | int] | None) -> str:
    if deviation is None:
        return "band centres            not recorded per scene"
    return (
        f"band centres            {deviation['scenes']} scenes deviate from the nominal table by at most "
        f"{deviation['max']} nm (median of their largest offsets {deviation['median']} nm)"
    )
