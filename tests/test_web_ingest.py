"""Ingest against the real web's ways: no head-of-line blocking, the runner a plain run gets, opt-outs per pair.

The simulated web (altsieve/testcorpus/websim.py) serves many hosts on 127.0.0.2 ... with latency,
stalls, resets, 404s and, on some hosts, a robots.txt and a tdmrep.json that refuse part of their
images; a plain `altsieve run` must report each URL's fate as the simulation planned it, from worker
processes, without resolving any name outside loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from altsieve.core import reasons
from altsieve.core.config import Config, ConfigError, DownloadConfig
from altsieve.pipeline import beam_run, ingest
from altsieve.pipeline.cli import build_parser, config_from_args
from altsieve.testcorpus import websim
from altsieve.transforms.download import _DownloadPartitions
from altsieve.transforms.read_inputs import Partition

# --------------------------------------------------------------------------------------------------------
# The Download stage keeps its window full across partitions
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_web(tmp_path_factory: pytest.TempPathFactory):
    corpus = websim.plan_web(40, seed=3, profile=websim.WebProfile(hosts=4, ttfb_median_s=0.02, stall_share=0.0,
                                                                   reset_share=0.0, not_found_share=0.0),
                             max_side=240)
    corpus.render(tmp_path_factory.mktemp("small-web"))
    with websim.WebSimServer(corpus) as server:
        yield corpus, server


def _row(key: str, url: str) -> dict:
    return {"key": key, "url": url, "caption": "a photo", "reason": None, "error_message": None, "extra": {}}


def test_a_slow_url_does_not_hold_the_next_partitions(small_web) -> None:
    corpus, server = small_web
    stall = websim.WebPage(10**6, 0, websim.STALL, 64, 64, "x")
    corpus.pages.append(stall)
    corpus._by_path[stall.path] = stall
    (corpus.folder / f"{stall.page_id:07d}.jpg").write_bytes(websim.render_photo(64, 64, 1))
    config = DownloadConfig(allow_private_addresses=["127.0.0.0/8"], idle_timeout_s=2.0, retries=0)
    stage = _DownloadPartitions(config)
    stage.setup()
    try:
        stage.start_bundle()
        first = Partition("p0", "in", [_row("stalled", corpus.url(stall, server.port))]
                          + [_row(f"a{i}", corpus.url(p, server.port)) for i, p in enumerate(corpus.pages[:10])])
        later = [Partition(f"p{n}", "in", [_row(f"{n}-{i}", corpus.url(p, server.port))
                                           for i, p in enumerate(corpus.pages[10 * n : 10 * n + 10])])
                 for n in (1, 2, 3)]
        started = time.monotonic()
        emitted = list(stage.process(first))
        assert time.monotonic() - started < 1.0  # returned with its stalled URL still in flight
        for partition in later:
            emitted += list(stage.process(partition))
        emitted += [value.value for value in stage.finish_bundle()]
        elapsed = time.monotonic() - started
    finally:
        stage.teardown()
    by_key = {record["key"]: record for record in emitted}
    assert len(by_key) == 41 and len(emitted) == 41
    assert by_key["stalled"]["reason"] == reasons.DOWNLOAD_TIMEOUT
    assert all(r["reason"] is None and r["bytes"] > 0 for k, r in by_key.items() if k != "stalled")
    # The later partitions were fetched while the stall was pending: one stall's time in all, and the
    # stalled record left last, after every record of the partitions behind it.
    assert elapsed < 4.0
    assert emitted[-1]["key"] == "stalled"
    assert {r["partition_id"]: r["partition_size"] for r in emitted} == {"p0": 11, "p1": 10, "p2": 10, "p3": 10}


# --------------------------------------------------------------------------------------------------------
# The runner a plain run gets, and the partition size
# --------------------------------------------------------------------------------------------------------


def test_plain_run_uses_the_local_runner_on_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    monkeypatch.setattr(beam_run, "local_cores", lambda: 4)
    assert beam_run.local_workers([]) == 4
    assert beam_run.local_workers([], rows=600, rows_per_worker=250) == 3  # fewer for a small pass
    assert beam_run.local_workers([], rows=10, rows_per_worker=250) == 1
    assert beam_run.local_workers(["--direct_num_workers=2"], rows=10, rows_per_worker=250) == 2  # the user's word
    assert beam_run.local_workers(["--direct_running_mode=in_memory"]) == 1
    assert beam_run.local_workers(["--direct_num_workers=0"]) == 4
    assert beam_run.local_workers(["--runner=PrismRunner"]) is None
    pipeline = beam_run.make_pipeline([], workers=4)
    assert isinstance(pipeline.runner, FnApiRunner)
    assert pipeline.options.view_as(DirectOptions).direct_num_workers == 4
    single = beam_run.make_pipeline([], workers=1)
    assert isinstance(single.runner, FnApiRunner)
    assert single.options.view_as(DirectOptions).direct_running_mode == "in_memory"
    for made in (pipeline, single):  # never run: Beam removes a pipeline's temp folder only in run()
        shutil.rmtree(made.local_tempdir)
    # A runner the user names is the one used, with their options untouched.
    named = beam_run.pipeline_options(["--runner=PrismRunner", "--direct_num_workers=3"])
    assert named.view_as(StandardOptions).runner == "PrismRunner"
    assert named.view_as(DirectOptions).direct_num_workers == 3


def test_a_killed_runs_beam_temp_folder_is_removed_by_the_next_run(tmp_path: Path, monkeypatch) -> None:
    """Beam removes its per-pipeline temp folder only at the end of run(); ours name the launcher's pid."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"altsieve-beam-{gone.pid}-x1"
    live = tmp_path / f"altsieve-beam-{os.getpid()}-x2"
    for folder in (dead, live):
        folder.mkdir()
    pipeline = beam_run.make_pipeline([], workers=1)
    assert not dead.exists() and live.exists()  # a running process's folder is its own to remove
    assert Path(pipeline.local_tempdir).parent == tmp_path
    assert Path(pipeline.local_tempdir).name.startswith(f"altsieve-beam-{os.getpid()}-")
    shutil.rmtree(pipeline.local_tempdir)


def test_partition_size_spreads_a_few_thousand_rows_over_all_workers(tmp_path: Path) -> None:
    config = Config()
    assert config.input.rows_per_partition is None
    sized = ingest.with_partition_size(config, str(tmp_path), total_rows=5000, workers=2)
    assert sized.input.rows_per_partition == 625  # 8 partitions: 4 per worker
    assert ingest.with_partition_size(config, str(tmp_path), 100, 2).input.rows_per_partition == 50
    assert ingest.with_partition_size(config, str(tmp_path), 10**9, 16).input.rows_per_partition == 10_000
    assert ingest.with_partition_size(config, str(tmp_path), 5000, None).input.rows_per_partition == 10_000
    explicit = config.model_copy(deep=True)
    explicit.input.rows_per_partition = 123
    assert ingest.with_partition_size(explicit, str(tmp_path), 5000, 2) is explicit
    # A resumed run keeps the size the first run chose, whatever the machine now has.
    ingest.check_config_matches(str(tmp_path), sized)
    assert ingest.with_partition_size(config, str(tmp_path), 5000, 16).input.rows_per_partition == 625


def _config_for(argv: list[str]) -> Config:
    args, _ = build_parser().parse_known_args(["run", "in.parquet", "-o", "out", *argv])
    return config_from_args(args)


def test_allow_private_addresses_needs_a_network() -> None:
    with pytest.raises(ConfigError, match="write `all`"):
        _config_for(["--allow-private-addresses"])
    assert _config_for(["--allow-private-addresses", "all"]).download.allow_private_addresses == ["0.0.0.0/0", "::/0"]
    assert _config_for(["--allow-private-addresses", "10.0.0.0/8"]).download.allow_private_addresses == ["10.0.0.0/8"]
    assert _config_for([]).download.allow_private_addresses == []


# --------------------------------------------------------------------------------------------------------
# A plain run on the simulated web
# --------------------------------------------------------------------------------------------------------

# Installed in every process of the run (launcher and Beam workers) through PYTHONPATH: each name any
# resolver is asked for is written down, and one outside loopback is refused.
_LOOKUP_GUARD = '''
import ipaddress, os, socket

_LOG = os.environ["ALTSIEVE_TEST_LOOKUPS"]


def _loopback(name):
    if isinstance(name, bytes):
        name = name.decode()
    name = (name or "").strip("[]").split("%")[0]
    if name in ("", "localhost") or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _guard(kind, name):
    with open(_LOG, "a") as log:
        log.write(f"{os.getpid()} {kind} {name}\\n")
    if not _loopback(name):
        raise socket.gaierror(socket.EAI_NONAME, f"test guard: {kind}({name!r}) outside loopback")


def _wrap(kind, real, pick=lambda args: args[0] if args else None):
    def guarded(*args, **kwargs):
        _guard(kind, kwargs.get("host", pick(args)))
        return real(*args, **kwargs)
    return guarded


with open(_LOG, "a") as _log:
    _log.write(f"{os.getpid()} loaded -\\n")
socket.getaddrinfo = _wrap("getaddrinfo", socket.getaddrinfo)
socket.gethostbyname = _wrap("gethostbyname", socket.gethostbyname)
socket.gethostbyname_ex = _wrap("gethostbyname_ex", socket.gethostbyname_ex)
socket.gethostbyaddr = _wrap("gethostbyaddr", socket.gethostbyaddr)
socket.getnameinfo = _wrap("getnameinfo", socket.getnameinfo, lambda args: args[0][0])
try:
    import aiodns
except ImportError:
    pass
else:
    for _method in ("getaddrinfo", "query", "gethostbyname", "gethostbyaddr"):
        if hasattr(aiodns.DNSResolver, _method):
            setattr(aiodns.DNSResolver, _method, _wrap(f"c-ares {_method}", getattr(aiodns.DNSResolver, _method),
                                                       lambda args: args[1] if len(args) > 1 else None))
'''

EXPECTED_BY_KIND = {
    websim.NORMAL: None,
    websim.NOT_FOUND: reasons.DOWNLOAD_NOT_FOUND,
    websim.STALL: reasons.DOWNLOAD_TIMEOUT,
    websim.RESET: reasons.DOWNLOAD_TRUNCATED,
    websim.ROBOTS_DISALLOWED: reasons.DOWNLOAD_ROBOTS_TXT,
    websim.TDM_RESERVED: reasons.DOWNLOAD_TDM_RESERVED,
}
OPTOUT_BY_KIND = {websim.ROBOTS_DISALLOWED: "robots.txt", websim.TDM_RESERVED: "tdmrep.json"}


def test_plain_run_on_the_simulated_web(tmp_path: Path) -> None:
    profile = websim.WebProfile(hosts=8, ttfb_median_s=0.05, stall_s=20.0, optout_hosts=(0, 1), optout_share=0.25)
    pages = 600  # more than one worker's worth (ingest.ROWS_PER_WORKER)
    corpus = websim.plan_web(pages, seed=11, profile=profile, max_side=256)
    corpus.render(tmp_path / "web")
    kinds = corpus.counts()
    assert all(kinds.get(kind) for kind in EXPECTED_BY_KIND), kinds  # every fate is exercised
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(_LOOKUP_GUARD)
    lookups = tmp_path / "lookups.txt"
    lookups.touch()
    env = {**os.environ, "ALTSIEVE_TEST_LOOKUPS": str(lookups),
           "PYTHONPATH": os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])])}
    output = tmp_path / "out"
    with websim.WebSimServer(corpus) as server:
        corpus.write_input(str(tmp_path / "input.parquet"), server.port)
        # A plain run: no runner, worker or download flag; loopback must be opened, nothing else is set.
        result = subprocess.run(
            [sys.executable, "-m", "altsieve.pipeline.cli", "run", str(tmp_path / "input.parquet"), "-o", str(output),
             "--allow-private-addresses", "127.0.0.0/8"],
            capture_output=True, text=True, env=env, timeout=600,
        )
        robots_requests = {path: count for path, count in server.requests.items() if path.endswith("/robots.txt")}
    assert result.returncode == 0, result.stderr[-3000:]
    # The guard was in every process, and nothing was looked up outside loopback.
    logged = [line.split(" ", 2) for line in lookups.read_text().splitlines()]
    loaded = {pid for pid, kind, _ in logged if kind == "loaded"}
    asked = [(kind, name) for _, kind, name in logged if kind != "loaded"]
    assert len(loaded) >= 3  # the launcher and its worker processes (workers for ingest: see below)
    assert all(name in ("localhost", "None") or name.startswith("127.") for _, name in asked), asked[:20]
    assert "Traceback" not in result.stderr and "INFO" not in result.stderr  # workers stay quiet
    rows = {}
    for path in (output / "_candidates").glob("*.parquet"):
        for row in pq.read_table(path, columns=["url", "reason", "optout", "error_message"]).to_pylist():
            rows[row["url"]] = row
    assert len(rows) == pages
    wrong = Counter()
    for page in corpus.pages:
        row = rows[corpus.url(page, server.port)]
        if row["reason"] != EXPECTED_BY_KIND[page.kind] or row["optout"] != OPTOUT_BY_KIND.get(page.kind):
            wrong[(page.kind, row["reason"], row["optout"])] += 1
    assert not wrong, wrong
    # robots.txt once per host per worker process (and the run used more than one: the rows are plenty).
    workers = beam_run.local_workers([], pages, ingest.ROWS_PER_WORKER)
    assert robots_requests and max(robots_requests.values()) <= workers
    stats = json.loads((output / "stats.json").read_text())
    assert stats["reasons"].get(reasons.DOWNLOAD_ROBOTS_TXT) == kinds[websim.ROBOTS_DISALLOWED]
    config = json.loads((output / "manifest.json").read_text())["config"]
    assert config["input"]["rows_per_partition"] == ingest.with_partition_size(
        Config(), str(tmp_path / "fresh"), pages, workers).input.rows_per_partition


def test_a_time_scaled_web_is_the_same_web_slower() -> None:
    # bench_web --time-scale: every network time x F, so a slow machine meets what a fast one does; the URLs' fates
    # and sizes stay as they are.
    base = websim.WebProfile()
    scaled = websim.scaled_profile(base, 2.0)
    assert (scaled.ttfb_median_s, scaled.stall_s, scaled.bandwidth_bytes_per_s) == (
        2 * base.ttfb_median_s, 2 * base.stall_s, base.bandwidth_bytes_per_s / 2)
    assert websim.plan_web(300, seed=4, profile=scaled).pages == websim.plan_web(300, seed=4, profile=base).pages
