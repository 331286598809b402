"""The common base of every error spectral-corpus raises on purpose.

Each package keeps its own hierarchy under it (``catalog.errors``, ``stages.errors``,
``pipeline.errors``, ``training.errors``, ``corpus_format.FormatError``); the command line reports
any of them as one line and exit status 2, and lets anything else (a bug) show its traceback.
"""


class SpectralCorpusError(Exception):
    """An error whose message says what is wrong and what to do."""
