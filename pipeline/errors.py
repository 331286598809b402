"""Errors raised while running build, extend and resplit, and by the command line."""

from spectral_corpus.errors import SpectralCorpusError


class PipelineError(SpectralCorpusError):
    """Base class of pipeline errors."""


class BuildError(PipelineError, RuntimeError):
    """The build cannot go on; the message says why and what to do."""


class NothingBuiltError(BuildError):
    """Every scene was rejected, or no patch passed the rules: the run would publish nothing new."""


class CorpusLockedError(PipelineError, RuntimeError):
    """Another process is writing the corpus."""


class UsageError(PipelineError, ValueError):
    """Command-line options that cannot be used together or are no longer accepted."""
