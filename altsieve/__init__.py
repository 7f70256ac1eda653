"""altsieve: curate noisy web image/alt-text pairs into clean training shards.

The code lives in the top-level folders the design card names (``pipeline/``, ``transforms/``,
``filters/``, ``dedup/``); ``pyproject.toml`` installs them as ``altsieve.pipeline`` and so on, so
that no generic top-level module name (``pipeline``, ``filters``) is claimed in site-packages.
"""

__version__ = "0.1.0"
