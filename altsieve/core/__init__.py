"""The bottom layer: the config schema, the layout of an output tree, fsspec helpers, the reason codes, the event loop.

Nothing here imports the rest of altsieve (``lint-imports`` checks it): filters/, transforms/, dedup/
and pipeline/ build on it.
"""
