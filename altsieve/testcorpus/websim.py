"""A loopback simulation of the web for download benchmarks: latency, stalls, resets, 404s, many hosts, bandwidth.

The profile is the one `shared/reference/measured-baselines.md` ("Download under web-like latency")
measured img2dataset and altsieve on: photo-like JPEGs at web sizes (about 96 KB mean, longest side
200-2048 px); lognormal time to first byte (median 150 ms); 3 % of URLs stall after the headers,
2 % reset the connection mid-body, 5 % are 404s; 32 hosts (127.0.0.2, 127.0.0.3, ...) with Zipf
popularity; 4 MB/s per connection. Which URL does what is fixed by the seed, so two tools meet the
same web. ``optout_hosts`` makes some hosts serve a robots.txt and a tdmrep.json that refuse part
of their images, for tests of the opt-outs.

The images are drawn, not photographed (no photo set ships in a package): a smooth random colour
field with edges and grain, JPEG quality 85, each one distinct (no two share a pHash), rendered once
into a folder and then served from it. The server is asyncio on uvloop (one thread, thousands of connections)
and usually runs in its own process (``python -m altsieve.testcorpus.websim``), so its CPU is not
counted as the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import socket
import struct
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from altsieve.core.eventloop import new_event_loop

NORMAL, NOT_FOUND, STALL, RESET, ROBOTS_DISALLOWED, TDM_RESERVED = (
    "ok", "not_found", "stall", "reset", "robots_disallowed", "tdm_reserved")
_WORDS = ("red", "blue", "green", "old", "small", "quiet", "bright", "wooden", "city", "garden", "river", "house",
          "street", "market", "window", "bridge", "forest", "beach", "evening", "morning", "cat", "dog", "boat",
          "bicycle", "lamp", "table", "mountain", "road", "field", "tower")
# A connection's body leaves in bursts of this many bytes, each when the bandwidth cap allows its last byte (TCP,
# too, sends a window at a time). 64 KiB, not 16: the simulator shares the client's cores, and four times fewer
# writes and sleeps cut its CPU in a bench_web run of altsieve from 1.85-2.18 to 1.31-1.73 CPU-s (six
# interleaved pairs).
_CHUNK = 64 * 1024
_STALL_PREFIX = 1024


@dataclass(frozen=True)
class WebProfile:
    hosts: int = 32
    zipf_s: float = 1.0  # host k (from 1) gets a share proportional to 1 / k**zipf_s
    ttfb_median_s: float = 0.150
    ttfb_sigma: float = 0.7  # of the lognormal: about 1 response in 20 waits over 3x the median
    stall_share: float = 0.03
    reset_share: float = 0.02
    not_found_share: float = 0.05
    bandwidth_bytes_per_s: float = 4e6  # per connection
    stall_s: float = 60.0  # a stalled response sends nothing for this long, then closes
    # Hosts (by index) whose robots.txt disallows /img/private/ for altsieve and whose tdmrep.json reserves
    # /img/reserved/: a share of their URLs point there.
    optout_hosts: tuple[int, ...] = ()
    optout_share: float = 0.2


@dataclass(frozen=True)
class WebPage:
    page_id: int
    host: int
    kind: str
    width: int
    height: int
    caption: str

    @property
    def path(self) -> str:
        folder = {ROBOTS_DISALLOWED: "private/", TDM_RESERVED: "reserved/"}.get(self.kind, "")
        return f"/img/{folder}{self.page_id:07d}.jpg"


def host_address(host: int) -> str:
    return f"127.0.0.{2 + host}"


@dataclass
class WebCorpus:
    """What the simulated web holds: one page (URL) per image, its host, behaviour and size."""

    pages: list[WebPage]
    profile: WebProfile
    seed: int
    folder: Path | None = None
    _by_path: dict[str, WebPage] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_path = {page.path: page for page in self.pages}

    def page(self, path: str) -> WebPage | None:
        return self._by_path.get(path)

    def url(self, page: WebPage, port: int) -> str:
        return f"http://{host_address(page.host)}:{port}{page.path}"

    def input_table(self, port: int) -> pa.Table:
        return pa.table({"url": [self.url(p, port) for p in self.pages], "caption": [p.caption for p in self.pages]})

    def write_input(self, path: str, port: int) -> None:
        pq.write_table(self.input_table(port), path)

    def counts(self) -> dict[str, int]:
        return dict(Counter(page.kind for page in self.pages))

    def good_images(self) -> int:
        """URLs that serve an image to a crawler that honours no opt-out."""
        return sum(page.kind in (NORMAL, ROBOTS_DISALLOWED, TDM_RESERVED) for page in self.pages)

    def render(self, folder: str | Path) -> None:
        """Draw every image into ``folder`` (kept: a second call with the same corpus reuses them)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = self.folder / "corpus.json"
        meta = {"seed": self.seed, "pages": len(self.pages), "sizes": sum(p.width * p.height for p in self.pages),
                "version": 2}
        if stamp.exists() and json.loads(stamp.read_text()) == meta:
            return
        for page in self.pages:
            if page.kind in (NORMAL, STALL, RESET, ROBOTS_DISALLOWED, TDM_RESERVED):
                (self.folder / f"{page.page_id:07d}.jpg").write_bytes(
                    render_photo(page.width, page.height, self.seed * 1_000_003 + page.page_id))
        stamp.write_text(json.dumps(meta))

    def body(self, page: WebPage) -> bytes:
        if self.folder is None:
            raise RuntimeError("render() the corpus into a folder before serving it")
        return (self.folder / f"{page.page_id:07d}.jpg").read_bytes()


def plan_web(n_pages: int, seed: int = 0, profile: WebProfile | None = None, max_side: int = 2048) -> WebCorpus:
    """Which host serves each URL, how it behaves and how large its image is; deterministic in the seed.

    ``max_side`` caps the images' longest side (tests use small ones: they render in a few ms).
    """
    profile = profile or WebProfile()
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** profile.zipf_s for k in range(profile.hosts)]
    hosts = rng.choices(range(profile.hosts), weights=weights, k=n_pages)
    pages = []
    for page_id, host in enumerate(hosts):
        roll = rng.random()
        kind = NORMAL
        edges = (profile.not_found_share, profile.stall_share, profile.reset_share)
        if roll < edges[0]:
            kind = NOT_FOUND
        elif roll < edges[0] + edges[1]:
            kind = STALL
        elif roll < sum(edges):
            kind = RESET
        elif host in profile.optout_hosts and rng.random() < profile.optout_share:
            kind = rng.choice((ROBOTS_DISALLOWED, TDM_RESERVED))
        # Longest side lognormal around 600 px within 200-2048, aspect 0.6-1, landscape or portrait.
        longest = int(min(2048, max(200, rng.lognormvariate(math.log(600), 0.45))))
        shortest = max(120, int(longest * rng.uniform(0.6, 1.0)))
        if longest > max_side:
            longest, shortest = max_side, max(64, shortest * max_side // longest)
        width, height = (longest, shortest) if rng.random() < 0.7 else (shortest, longest)
        caption = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9))) + f" photo {page_id}"
        pages.append(WebPage(page_id, host, kind, width, height, caption))
    return WebCorpus(pages, profile, seed)


def render_photo(width: int, height: int, seed: int, quality: int = 85) -> bytes:
    """A photo-like JPEG: a smooth colour field, a few hard-edged regions and film grain; distinct per seed."""
    import cv2

    rng = np.random.default_rng(seed)
    cv2.setRNGSeed(seed % 2**31)
    # Composed at a quarter of the size (cheap), then one resize: smooth field, mid-scale detail, hard edges.
    small_w, small_h = max(8, width // 4), max(8, height // 4)
    small = cv2.resize(rng.uniform(0, 255, size=(6, 6, 3)).astype(np.float32), (small_w, small_h),
                       interpolation=cv2.INTER_CUBIC)
    detail = rng.normal(0, 28, size=(max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    small += cv2.resize(detail, (small_w, small_h), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(2, 6)):  # edges: the high frequencies photos have and smooth fields lack
        x0, y0 = int(rng.integers(0, small_w)), int(rng.integers(0, small_h))
        x1, y1 = x0 + int(rng.integers(small_w // 8, small_w // 2)), y0 + int(rng.integers(small_h // 8, small_h // 2))
        small[y0:y1, x0:x1] += rng.uniform(-70, 70, size=3).astype(np.float32)
    image = cv2.resize(np.clip(small, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    grain = np.empty((height, width * 3), np.int16)  # one channel: cv2.randn's scalar sigma is per channel
    cv2.randn(grain, 0, 9)  # 6x faster than numpy's normal: drawing is not what a benchmark should wait for
    image = np.clip(image.astype(np.int16) + grain.reshape(image.shape), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


# --------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------

_ROBOTS_OPTOUT = b"User-agent: altsieve\nDisallow: /img/private/\n\nUser-agent: *\nAllow: /\n"
_TDMREP_OPTOUT = json.dumps([{"location": "/img/reserved/*", "tdm-reservation": 1,
                              "tdm-policy": "https://example.com/policy.json"}]).encode()


class WebSimServer:
    """Serves a rendered WebCorpus on 127.0.0.2 ... (one port, one listener per host) from one asyncio thread."""

    def __init__(self, corpus: WebCorpus, port: int = 0) -> None:
        self.corpus, self.port = corpus, port
        self.requests: Counter[str] = Counter()  # path -> requests served (robots.txt per host: "host/robots.txt")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._stopping: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def __enter__(self) -> WebSimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> int:
        # uvloop: the simulator shares the client's cores, and asyncio's loop spent 3.4-3.8 CPU-s of a bench_web
        # run of altsieve, uvloop 2.5-3.5 (four interleaved pairs, sampled from /proc)
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="websim", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)
        return self.port

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    async def _listen(self) -> int:
        self._stopping = asyncio.Event()
        addresses = [host_address(k) for k in range(self.corpus.profile.hosts)]
        for _ in range(20):  # the first listener picks a free port; the others must get the same one
            first = await asyncio.start_server(self._handle, addresses[0], self.port, backlog=4096)
            port = first.sockets[0].getsockname()[1]
            servers = [first]
            try:
                for address in addresses[1:]:
                    servers.append(await asyncio.start_server(self._handle, address, port, backlog=4096))
            except OSError:
                for server in servers:
                    server.close()
                if self.port:
                    raise
                continue
            self._servers = servers
            return port
        raise OSError("no port free on every simulated host address")

    async def _close(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for server in self._servers:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = writer.get_extra_info("sockname")[0]
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
                path = target.split("?", 1)[0]
                if not await self._respond(host, path, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError):
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _respond(self, host: str, path: str, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is finished with (stall, reset)."""
        corpus, profile = self.corpus, self.corpus.profile
        host_index = int(host.rsplit(".", 1)[1]) - 2
        if path in ("/robots.txt", "/.well-known/tdmrep.json"):
            self.requests[f"{host}{path}"] += 1
            if host_index in profile.optout_hosts:
                body = _ROBOTS_OPTOUT if path == "/robots.txt" else _TDMREP_OPTOUT
                await self._send(writer, 200, "text/plain" if path == "/robots.txt" else "application/json", body)
            else:
                await self._send(writer, 404, "text/plain", b"Not Found")
            return True
        page = corpus.page(path)
        self.requests[path] += 1
        rng = random.Random(f"{corpus.seed}:{path}:{self.requests[path]}")
        await asyncio.sleep(rng.lognormvariate(math.log(profile.ttfb_median_s), profile.ttfb_sigma))
        if page is None or page.kind == NOT_FOUND or page.host != host_index:
            await self._send(writer, 404, "text/plain", b"Not Found")
            return True
        body = corpus.body(page)
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: max-age=86400\r\n\r\n").encode()
        writer.write(head)
        if page.kind == STALL:
            writer.write(body[:_STALL_PREFIX])
            await writer.drain()
            assert self._stopping is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), profile.stall_s)
            return False
        if page.kind == RESET:
            await self._trickle(writer, body[: len(body) // 2])
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close with a RST, as a crashed proxy does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        await self._trickle(writer, body)
        return True

    async def _trickle(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        """Send at most bandwidth_bytes_per_s on this connection: byte n leaves no sooner than n / bandwidth after
        the first (the whole body takes len / bandwidth, whatever the burst size)."""
        loop = asyncio.get_running_loop()
        bandwidth, started = self.corpus.profile.bandwidth_bytes_per_s, loop.time()
        for start in range(0, len(body), _CHUNK):
            end = min(start + _CHUNK, len(body))
            wait = started + end / bandwidth - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(body[start:end])
            await writer.drain()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes) -> None:
        reason = {200: "OK", 404: "Not Found"}.get(status, "Status")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        await writer.drain()


def scaled_profile(profile: WebProfile, factor: float) -> WebProfile:
    """``profile`` with every network time x ``factor``: the same web for a CPU ``factor`` times as fast, relative to
    it (which URL does what is unchanged: the plan's draws do not depend on the times)."""
    return dataclasses.replace(profile, ttfb_median_s=profile.ttfb_median_s * factor, stall_s=profile.stall_s * factor,
                               bandwidth_bytes_per_s=profile.bandwidth_bytes_per_s / factor)


def main(argv: list[str] | None = None) -> int:
    """Render and serve a simulated web until stdin closes; prints the port on stdout's first line."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", required=True, help="folder for the rendered images (reused when it matches)")
    parser.add_argument("--input", help="write the URL list (Parquet: url, caption) here")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="every network time x this (time to first byte, stall; bandwidth / this)")
    args = parser.parse_args(argv)
    corpus = plan_web(args.pages, args.seed, scaled_profile(WebProfile(), args.time_scale))
    corpus.render(args.dir)
    with WebSimServer(corpus, args.port) as server:
        if args.input:
            corpus.write_input(args.input, server.port)
        print(server.port, flush=True)
        print(json.dumps({"pages": len(corpus.pages), "kinds": corpus.counts(), "good_images": corpus.good_images(),
                          "mean_bytes": _mean_size(Path(args.dir))}), flush=True)
        sys.stdin.read()  # the parent closes our stdin to stop us
    return 0


def _mean_size(folder: Path) -> int:
    sizes = [os.path.getsize(p) for p in folder.glob("*.jpg")]
    return int(sum(sizes) / len(sizes)) if sizes else 0


if __name__ == "__main__":
    sys.exit(main())
