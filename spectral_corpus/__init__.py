"""spectral-corpus: build, extend and stream EnMAP hyperspectral pretraining corpora.

The repository keeps its four packages at the top (``catalog/``, ``stages/``, ``pipeline/``,
``training/``); they are installed, imported and type-checked only as subpackages of this one
namespace (``spectral_corpus.catalog`` ...), so a user's own ``training`` or ``pipeline`` package
neither shadows ours nor is shadowed by it. The subfolders here are links to those packages.
"""
