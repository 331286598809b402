"""What a run of ``build``, ``extend`` or ``resplit`` came to: one typed result for each outcome."""

from __future__ import annotations

from dataclasses import dataclass

from spectral_corpus.corpus_format import Manifest


@dataclass(frozen=True)
class Published:
    """A new version was published; its manifest says what it holds."""

    manifest: Manifest

    @property
    def version(self) -> int:
        return self.manifest.version


@dataclass(frozen=True)
class Unchanged:
    """There was nothing new: ``version`` stays current."""

    version: int


@dataclass(frozen=True)
class DryRun:
    """What an extension would publish as ``version``; nothing was written."""

    version: int
    new_scenes: list[str]
    #: Product -> why it is not used.
    rejected_scenes: dict[str, str]
    new_observations: int
    new_locations: int
    retired_observations: int
    observations_after: int


RunResult = Published | Unchanged | DryRun
