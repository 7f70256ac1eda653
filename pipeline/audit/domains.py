"""Domains of the pairs' URLs (registered domains, from the Public Suffix List), and a counter whose memory is capped.

A domain is the registered domain (eTLD+1) of the URL's host: ``img.bbc.co.uk`` and ``www.bbc.co.uk``
are ``bbc.co.uk``, ``a.example.com`` is ``example.com``, and a private suffix counts as a public one
(``foo.blogspot.com`` and ``bar.github.io`` are sites of their own, as browsers treat them). tldextract
with the Public Suffix List snapshot it ships: no network, no cache on disk. A host the list cannot
place (an IP address, ``localhost``, a suffix the list lacks) is its own domain.

Hosts are pulled out of the URLs by pyarrow (one regex over the column); only the distinct hosts of a
batch go through tldextract, each once per audit (a memo of at most ``HOST_MEMO`` hosts).
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

DOMAIN_CAP = 200_000  # distinct domains kept exactly before the rarest are folded
HOST_MEMO = 1_000_000  # distinct hosts remembered; past that the memo starts over
NO_HOST = "(no host)"
_HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>[^/?#:]+)"


class TopCounter:
    """A counter whose size is capped: past ``cap`` keys the rarest half is folded into ``folded``.

    Counts of the keys that stay can be short by at most ``max_folded`` (the largest count folded),
    which the report states; below the cap every count is exact.
    """

    def __init__(self, cap: int = DOMAIN_CAP) -> None:
        self.cap = cap
        self.counts: Counter[Any] = Counter()
        self.folded = 0
        self.max_folded = 0

    def update(self, items: dict[Any, int]) -> None:
        self.counts.update(items)
        if len(self.counts) > self.cap:
            keep = dict(self.counts.most_common(self.cap // 2))
            dropped = [v for k, v in self.counts.items() if k not in keep]
            self.folded += sum(dropped)
            self.max_folded = max(self.max_folded, max(dropped))
            self.counts = Counter(keep)


@functools.cache
def _extractor() -> Any:
    import tldextract

    # suffix_list_urls=(): never fetch the list; cache_dir=None: no cache file; the bundled snapshot is used.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


class DomainMapper:
    """host -> registered domain, memoised."""

    def __init__(self) -> None:
        self._memo: dict[str, str] = {}

    def domain(self, host: str) -> str:
        found = self._memo.get(host)
        if found is None:
            if len(self._memo) >= HOST_MEMO:
                self._memo.clear()
            parts = _extractor()(host)
            found = self._memo[host] = parts.top_domain_under_public_suffix or host
        return found

    def domains(self, urls: pa.ChunkedArray | pa.Array) -> pa.Array:
        """The registered domain of each URL (``(no host)`` where it has none)."""
        hosts = pc.utf8_lower(pc.struct_field(pc.extract_regex(urls, _HOST), "host"))
        hosts = pc.fill_null(hosts, NO_HOST)
        if isinstance(hosts, pa.ChunkedArray):
            hosts = hosts.combine_chunks()
        encoded = hosts.dictionary_encode()
        mapped = pa.array([self.domain(h) if h != NO_HOST else NO_HOST for h in encoded.dictionary.to_pylist()],
                          pa.string())
        return mapped.take(encoded.indices)
