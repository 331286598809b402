"""The common base of the errors spectral-corpus raises about input, files, corpora and settings.

Each package keeps its own hierarchy under it (``catalog.errors``, ``stages.errors``,
``pipeline.errors``, ``training.errors``, ``corpus_format.FormatError``); the command line reports
any of them as one line and exit status 2, and lets anything else show its traceback (a ValueError
from misusing the Python API, a bug).
"""


class SpectralCorpusError(Exception):
    """An error whose message says what is wrong and what to do."""
