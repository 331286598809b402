"""Compose the stages on Dask, record progress, and own the command line."""
