"""Opt-out signals a site gives a crawler that collects training data, parsed without any network.

* robots.txt (RFC 9309), parsed by Protego (Scrapy's parser: wildcards, ``$``, longest match): a URL
  is refused when the group for our agent (the first agent name, altsieve) refuses it, or ``*`` when
  no group names us, as the RFC says; and when a group that names one of our other agent names
  (img2dataset: sites that opted out of it meant image-dataset crawlers) refuses it.
* X-Robots-Tag ``noai``, ``noimageai``, ``noml``, plain or scoped to one of our agent names or ``*``.
* TDMRep (W3C TDM Reservation Protocol): the ``tdm-reservation: 1`` response header, and the rules of
  ``/.well-known/tdmrep.json`` (an array of ``{"location": path pattern, "tdm-reservation": 0|1}``;
  the first rule whose location matches the path applies; patterns use robots.txt syntax).

Each check names the signal that matched, so that a dropped pair's row says why (``optout`` column).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The values of the ``optout`` column: which signal dropped a pair.
ROBOTS_TXT = "robots.txt"
X_ROBOTS_TAG = "x-robots-tag"
TDM_HEADER = "tdm-reservation"
TDMREP_JSON = "tdmrep.json"

ROBOTS_PATH = "/robots.txt"
TDMREP_PATH = "/.well-known/tdmrep.json"
# RFC 9309: a crawler must parse at least the first 500 KiB; the rest may be ignored.
ROBOTS_MAX_BYTES = 500 * 1024
TDMREP_MAX_BYTES = 500 * 1024

_ROBOTS_OPTOUT_DIRECTIVES = frozenset({"noai", "noimageai", "noml"})
# X-Robots-Tag directives that carry a value after a colon, so "name: value" is not an agent prefix.
_ROBOTS_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_ROBOTS_AGENT_RE = re.compile(r"^[a-z0-9_.*-]+$")
_USER_AGENT_LINE = re.compile(r"^\s*user-agent\s*:\s*([^\s#]+)", re.IGNORECASE | re.MULTILINE)


def robots_optout(header_values: Iterable[str], agent_names: Iterable[str]) -> str | None:
    """The X-Robots-Tag directive that opts this crawler out of AI use, or None.

    Follows Google's X-Robots-Tag grammar: comma-separated directives, optionally preceded by
    ``agent:`` which scopes the following directives (until the next agent prefix) to that agent.
    Unscoped directives and ``*`` apply to everyone; ``otherbot: noai`` does not apply to us.
    """
    names = {n.lower() for n in agent_names} | {"*"}
    for value in header_values:
        agent: str | None = None
        for raw in value.split(","):
            part = raw.strip()
            if not part:
                continue
            head, sep, rest = part.partition(":")
            head = head.strip().lower()
            if sep and head not in _ROBOTS_VALUED_DIRECTIVES and _ROBOTS_AGENT_RE.match(head):
                agent = head
                directive = rest.strip().lower()
            else:
                directive = part.lower()
            if directive in _ROBOTS_OPTOUT_DIRECTIVES and (agent is None or agent in names):
                return part
    return None


def tdm_header_reserved(values: Iterable[str]) -> bool:
    """True when a ``tdm-reservation`` response header says 1 (rights reserved)."""
    return any(value.strip() == "1" for value in values)


class RobotsRules:
    """One origin's robots.txt; ``None`` content (404 and other 4xx: RFC 9309 "unavailable") allows everything."""

    def __init__(self, content: bytes | None, agent_names: Sequence[str]) -> None:
        self._agents: tuple[str, ...] = ()
        self._parser = None
        if content:
            from protego import Protego

            text = content[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace")
            self._parser = Protego.parse(text)
            named = {match.group(1).lower() for match in _USER_AGENT_LINE.finditer(text)}
            main, *others = agent_names
            # Our own agent always (with the "*" fallback); the others only where a group names them.
            self._agents = (main, *(name for name in others if name.lower() in named))

    def disallowed(self, url: str) -> str | None:
        """Which of our agent names robots.txt refuses ``url`` to, or None when it may be fetched."""
        if self._parser is None:
            return None
        for agent in self._agents:
            if not self._parser.can_fetch(url, agent):
                return agent
        return None


@dataclass(frozen=True)
class _TdmRule:
    location: str
    pattern: re.Pattern[str]
    reserved: bool


def _location_pattern(location: str) -> re.Pattern[str]:
    """A robots.txt-style path pattern as a regex: ``*`` any run of characters, a final ``$`` the end."""
    anchored = location.endswith("$")
    body = location[:-1] if anchored else location
    regex = ".*".join(re.escape(piece) for piece in body.split("*"))
    return re.compile(regex + ("$" if anchored else ""))


class TdmRules:
    """One origin's /.well-known/tdmrep.json; a missing or malformed file declares nothing."""

    def __init__(self, content: bytes | None) -> None:
        self._rules: list[_TdmRule] = []
        if not content:
            return
        try:
            data = json.loads(content[:TDMREP_MAX_BYTES].decode("utf-8", errors="replace"))
        except ValueError:
            return
        if not isinstance(data, list):
            return
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("location"), str):
                continue
            location = item["location"].strip() or "/"
            if not location.startswith(("/", "*")):
                location = "/" + location
            reserved = str(item.get("tdm-reservation", "0")).strip() == "1"
            self._rules.append(_TdmRule(location, _location_pattern(location), reserved))

    def reserved(self, path: str) -> str | None:
        """The location of the first rule matching ``path`` when it reserves TDM rights, else None."""
        for rule in self._rules:
            if rule.pattern.match(path):
                return rule.location if rule.reserved else None
        return None
