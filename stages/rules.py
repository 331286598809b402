"""The corpus rules: which cells become observations. All configurable, all recorded in the corpus."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from spectral_corpus.stages.errors import RulesError


@dataclass(frozen=True)
class Rules:
    """Thresholds and layout. An observation is dropped when a fraction exceeds its maximum.

    ``max_nodata = 0`` drops a patch with any nodata pixel. ``zone_overlap`` is the share of a cell's
    area above which cells of different UTM zones count as the same place. Splits are drawn per block
    of ``split_block_cells`` x ``split_block_cells`` cells (see ``stages.splits``).
    """

    max_nodata: float = 0.0
    max_cloud: float = 0.01
    max_cloudshadow: float = 0.01
    max_snow: float = 0.10
    zone_overlap: float = 0.01
    bands: int = 202
    shard_size: int = 32
    block_cells: int = 8
    split_block_cells: int = 16
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0

    def thresholds(self) -> dict[str, float]:
        """Flag name -> maximum fraction, in the order rules are applied."""
        return {
            "nodata": self.max_nodata,
            "cloud": self.max_cloud,
            "cloudshadow": self.max_cloudshadow,
            "snow": self.max_snow,
        }

    def as_dict(self) -> dict[str, float | int]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, float | int]) -> Rules:
        """Rules from ``as_dict`` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise RulesError(f"unknown rule(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)  # type: ignore[arg-type]
