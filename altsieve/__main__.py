"""``python -m altsieve``: the altsieve command (pipeline/launch.py)."""

from altsieve.pipeline.launch import entry

entry()
