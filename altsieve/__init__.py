"""altsieve: curate noisy web image/alt-text pairs into clean training shards.

The code lives in the top-level folders the design card names (``pipeline/``, ``transforms/``,
``filters/``, ``dedup/``); ``pyproject.toml`` installs them as ``altsieve.pipeline`` and so on, so
that no generic top-level module name (``pipeline``, ``filters``) is claimed in site-packages.
"""

__version__ = "0.1.0"


def _quiet_beam_optional_dependency_warning() -> None:
    """Beam's GCP module logs 'apitools not found' at import on every machine without the GCP extras.

    It is meaningless to users of the DirectRunner, Flink or Spark and shows on every command, so
    exactly that message is filtered from the root logger; everything else Beam logs is kept.
    """
    import logging

    class _DropApitoolsNotice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("apitools not found")

    logging.getLogger().addFilter(_DropApitoolsNotice())


_quiet_beam_optional_dependency_warning()
