"""``altsieve audit PATH --report DIR``: the noise statistics of a corpus, as one HTML file and as JSON.

PATH is one of:

- an altsieve output folder (``_altsieve/``, ``_candidates/``): every input row is in the candidate
  Parquet files with its ingest reason, and the select pass's decision is laid over it;
- an img2dataset output (``*.parquet`` with ``status`` and ``error_message``, ``*.tar`` beside them
  when written as webdataset): its status and error message are mapped onto altsieve's reason codes;
- bare Parquet (a file or a folder) with url and caption columns: metadata only.

It computes what the input holds and lists what it could not compute, with why. Statistics are
streamed one Parquet file (or row-group batch) at a time through pyarrow compute into fixed-bin
histograms and counters: no step holds the corpus as one frame. Memory grows only with the number
of distinct domains (capped, see ``domains.TopCounter``) and with the keys of duplicates (Arrow strings).

One module per concern: ``sources`` (what PATH is, its rows batch by batch; ``img2dataset`` maps
that tool's messages), ``aggregate`` (the streamed statistics; ``histograms``, ``domains``),
``published`` (the published funnels beside this one), ``thumbnails``, ``runinfo`` (the run's
manifest), ``command`` (the whole audit), ``html`` and ``plots`` (the page).
"""

from altsieve.pipeline.audit.command import audit, audit_cli, load
from altsieve.pipeline.audit.histograms import HIST_SPECS
from altsieve.pipeline.audit.img2dataset import img2dataset_reason
from altsieve.pipeline.audit.sources import AuditError

__all__ = ["HIST_SPECS", "AuditError", "audit", "audit_cli", "img2dataset_reason", "load"]
