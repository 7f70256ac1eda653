"""Input-row rules: what is not an absolute http(s) URL is dropped without any network.

The downloader checks every URL again (and every redirect) against its address policy; these rules
only keep rows that could never be fetched out of the download stage.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from altsieve.core import reasons
from altsieve.core.config import Config
from altsieve.filters.base import PairRule, Record, Verdict


class UrlPresent(PairRule):
    """Always on: a row whose URL cell is empty."""

    stage, reasons = reasons.INPUT, (reasons.URL_MISSING,)

    @classmethod
    def from_config(cls, config: Config) -> UrlPresent:
        return cls()

    def check(self, record: Record) -> Verdict:
        return None if record.get("url") else (reasons.URL_MISSING, "empty URL cell")


def url_reason(url: str) -> str | None:
    """Reject, without any network, what is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return reasons.URL_INVALID
    if not parts.scheme or not parts.netloc:
        return reasons.URL_INVALID
    if parts.scheme.lower() not in ("http", "https"):
        return reasons.URL_SCHEME_NOT_ALLOWED
    return None


class HttpUrl(PairRule):
    """Always on: a URL that does not parse, has no host, or is not http(s) (ftp:, javascript:, data:...)."""

    stage, reasons = reasons.INPUT, (reasons.URL_INVALID, reasons.URL_SCHEME_NOT_ALLOWED)

    @classmethod
    def from_config(cls, config: Config) -> HttpUrl:
        return cls()

    def check(self, record: Record) -> Verdict:
        url = record.get("url") or ""
        reason = url_reason(url)
        return None if reason is None else (reason, f"not an http(s) URL: {url[:200]!r}")
