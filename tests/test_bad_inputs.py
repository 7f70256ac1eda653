"""A corpus of bad inputs, each with the error or the reason codes it must give (table-driven).

Rows: every bad row is a row with a reason code and a message naming its line, the good rows around it
are read as they are (never merged, never U+FFFD). Files: a file that cannot be read at all is one
``InputError`` naming it. Command lines: every user error is one line naming what and where, exit code 2,
no traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altsieve.core import reasons
from altsieve.core.config import InputConfig
from altsieve.pipeline.cli import main
from altsieve.transforms.read_inputs import InputError, iter_rows, list_input_files

OK = None
MALFORMED, UNDECODABLE = reasons.INPUT_MALFORMED_ROW, reasons.INPUT_UNDECODABLE


def csv_lines(*rows: str, header: str = "url,caption") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode("utf-8")


def urls(first: int, last: int) -> list[str]:
    return [f"http://e.com/{i}.jpg,caption {i}" for i in range(first, last + 1)]


def parquet_bytes(columns: dict[str, pa.Array]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def truncated_gzip(text: str) -> bytes:
    packed = gzip.compress(text.encode("utf-8"))
    return packed[: len(packed) // 2]


MANY = "".join(f"http://e.com/{i}.jpg,caption number {i * 7919 % 10007}\n" for i in range(20_000))
MANY_JSON = "".join(json.dumps({"url": f"http://e.com/{i}.jpg", "caption": f"c {i * 7919 % 10007}"}) + "\n"
                    for i in range(20_000))


@dataclass
class Case:
    name: str
    file: str
    content: bytes
    # (reason, caption) of each row in order; a caption of ... is not checked. Or an InputError pattern.
    rows: list[tuple[str | None, Any]] = field(default_factory=list)
    error: str | None = None
    settings: InputConfig | None = None
    message: str | None = None  # a pattern the first bad row's error_message matches


CASES = [
    # The probe's 10-row CSV: an unclosed quote on row 3 swallowed rows 3-10 into one 397-character caption.
    Case("unclosed quote", "q.csv", csv_lines(*urls(1, 2), 'http://e.com/3.jpg,"unclosed three', *urls(4, 10)),
         [(OK, "caption 1"), (OK, "caption 2"), (MALFORMED, ""), *[(OK, f"caption {i}") for i in range(4, 11)]],
         message=r"^line 4: a quoted field is never closed"),
    Case("quote inside a quoted field", "q2.csv", csv_lines('http://e.com/1.jpg,"a "quoted" word"', *urls(2, 2)),
         [(MALFORMED, ""), (OK, "caption 2")], message=r"^line 2: ',' expected after '\"'"),
    Case("too many and too few fields", "n.csv", csv_lines("http://e.com/1.jpg,a,b", "http://e.com/2.jpg", *urls(3, 3)),
         [(MALFORMED, ""), (MALFORMED, ""), (OK, "caption 3")], message=r"^line 2: 3 fields where the header has 2"),
    Case("quoted newline, one line a row (default)", "m.csv", csv_lines('http://e.com/1.jpg,"two\nlines"', *urls(2, 2)),
         [(MALFORMED, ""), (MALFORMED, ""), (OK, "caption 2")]),
    Case("quoted newline allowed", "m2.csv", csv_lines('http://e.com/1.jpg,"two\nlines"', *urls(2, 2)),
         [(OK, "two\nlines"), (OK, "caption 2")], settings=InputConfig(newlines_in_values=True)),
    Case("unclosed quote with newlines allowed: the swallowed lines are read again", "m3.csv",
         csv_lines('http://e.com/1.jpg,"never closed', *urls(2, 4)),
         [(MALFORMED, ""), (OK, "caption 2"), (OK, "caption 3"), (OK, "caption 4")],
         settings=InputConfig(newlines_in_values=True), message=r"^line 2: a quoted field is never closed"),
    Case("UTF-8 BOM", "bom.csv", b"\xef\xbb\xbf" + csv_lines(*urls(1, 2)), [(OK, "caption 1"), (OK, "caption 2")]),
    Case("Latin-1 bytes in a UTF-8 file", "latin.csv", csv_lines(*urls(1, 1)) + "http://e.com/2.jpg,café\n".encode(
        "latin-1") + b"http://e.com/3.jpg,caption 3\n", [(OK, "caption 1"), (UNDECODABLE, ""), (OK, "caption 3")],
         message=r"^line 3: byte b'\\xe9' at column 23 is not valid utf-8; name the file's encoding with --encoding"),
    Case("Latin-1 file named with --encoding", "latin2.csv", "url,caption\nhttp://e.com/1.jpg,café\n".encode("latin-1"),
         [(OK, "café")], settings=InputConfig(encoding="latin-1")),
    Case("UTF-16 file named with --encoding", "u16.tsv", "url\tcaption\nhttp://e.com/1.jpg\t猫\n".encode("utf-16"),
         [(OK, "猫")], settings=InputConfig(encoding="utf-16")),
    Case("200 KB caption", "long.csv", csv_lines("http://e.com/1.jpg," + "x" * 200_000), [(OK, "x" * 200_000)]),
    Case("blank lines are no rows", "blank.csv", csv_lines(*urls(1, 1), "", *urls(2, 2)),
         [(OK, "caption 1"), (OK, "caption 2")]),
    Case("empty url, ftp url, bad url", "urls.csv", csv_lines(",no url", "ftp://e.com/1.jpg,ftp", "http://,x"),
         [(reasons.URL_MISSING, "no url"), (reasons.URL_SCHEME_NOT_ALLOWED, "ftp"), (reasons.URL_INVALID, "x")]),
    Case("JSONL: not JSON, not an object, a caption that is a list", "rows.jsonl",
         b'{"url": "http://e.com/1.jpg", "caption": "one"}\nnot json\n[1, 2]\n'
         b'{"url": "http://e.com/4.jpg", "caption": ["a", "b"]}\n{"url": "http://e.com/5.jpg", "caption": 5}\n',
         [(OK, "one"), (MALFORMED, ""), (MALFORMED, ""), (MALFORMED, ""), (OK, "5")],
         message=r"^line 2: unparseable JSON"),
    Case("JSONL: BOM and Latin-1", "bom.jsonl", b'\xef\xbb\xbf{"url": "http://e.com/1.jpg", "caption": "one"}\n'
         + '{"url": "http://e.com/2.jpg", "caption": "café"}\n'.encode("latin-1"), [(OK, "one"), (UNDECODABLE, "")]),
    Case("Parquet binary caption column", "bin.parquet", parquet_bytes({
        "url": pa.array(["http://e.com/1.jpg", "http://e.com/2.jpg"]),
        "caption": pa.array(["café au lait photo".encode(), b"caf\xe9 au lait photo"], pa.binary())}),
         [(OK, "café au lait photo"), (UNDECODABLE, "")], message=r"binary url or caption cell is not valid utf-8"),
    Case("Parquet binary caption in Latin-1, named", "bin2.parquet", parquet_bytes({
        "url": pa.array(["http://e.com/1.jpg"]), "caption": pa.array([b"caf\xe9 au lait photo"], pa.binary())}),
         [(OK, "café au lait photo")], settings=InputConfig(encoding="latin-1")),
    Case("Parquet null caption and number url", "null.parquet", parquet_bytes({
        "url": pa.array(["http://e.com/1.jpg"]), "caption": pa.array([None], pa.string())}),
         [(OK, "")]),
    # Files that cannot be read: one InputError naming the file (and the line where it matters).
    Case("truncated .csv.gz", "t.csv.gz", truncated_gzip("url,caption\n" + MANY),
         error=r"t\.csv\.gz: the compressed stream is truncated or corrupt after line \d+"),
    Case("truncated .jsonl.gz", "t.jsonl.gz", truncated_gzip(MANY_JSON),
         error=r"t\.jsonl\.gz: the compressed stream is truncated or corrupt after line \d+"),
    Case("not gzip at all", "fake.csv.gz", b"url,caption\nhttp://e.com/1.jpg,x\n",
         error=r"fake\.csv\.gz: the compressed stream is truncated or corrupt after line 0"),
    Case("truncated .parquet.gz", "t.parquet.gz", gzip.compress(parquet_bytes({
        "url": pa.array(["http://e.com/1.jpg"] * 1000), "caption": pa.array(["x"] * 1000)}))[:300],
         error=r"t\.parquet\.gz: cannot be read"),
    Case("not Parquet", "bad.parquet", b"definitely not parquet", error=r"bad\.parquet: not a readable Parquet file"),
    Case("missing column", "cols.csv", csv_lines("http://e.com/1.jpg,x", header="link,text"),
         error=r"cols\.csv: column 'url' not found; its columns are link, text"),
    Case("header of a BOM file names its columns plainly", "bomcols.csv",
         b"\xef\xbb\xbf" + csv_lines("http://e.com/1.jpg,x", header="link,caption"),
         error=r"column 'url' not found; its columns are link, caption\. "),
    Case("empty file", "empty.csv", b"", error=r"empty\.csv: empty file, no header line"),
    Case("undecodable header", "badhead.csv", "ürl,caption\n".encode("latin-1"),
         error=r"badhead\.csv: cannot read its header \(line 1: byte"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, tmp_path) -> None:
    path = tmp_path / case.file
    path.write_bytes(case.content)
    (source,) = list_input_files([str(path)])
    read = lambda: list(iter_rows(source, "url", "caption", [], settings=case.settings))  # noqa: E731
    if case.error is not None:
        with pytest.raises(InputError, match=case.error) as raised:
            read()
        assert str(path) in str(raised.value) and "\n" not in str(raised.value)
        return
    rows = read()
    assert [(row["reason"], row["caption"]) for row in rows] == case.rows
    assert all("\ufffd" not in row["caption"] for row in rows)
    assert [row["key"] for row in rows] == [f"00000{i:010d}" for i in range(len(rows))]
    bad = [row for row in rows if row["reason"] in (MALFORMED, UNDECODABLE)]
    assert all(row["error_message"].startswith("line ") or source.fmt == "parquet" for row in bad)
    if case.message is not None:
        assert bad and re.search(case.message, bad[0]["error_message"]), bad[0]["error_message"]


def test_caption_longer_than_max_chars_is_the_caption_rule_s_drop(tmp_path) -> None:
    """A caption past the reader's own field limit is still read when rules.caption.max_chars allows it."""
    path = tmp_path / "long.csv"
    path.write_bytes(csv_lines("http://e.com/1.jpg," + "x" * 1_500_000, *urls(2, 2)))
    (source,) = list_input_files([str(path)])
    default = list(iter_rows(source, "url", "caption", []))
    assert [r["reason"] for r in default] == [MALFORMED, OK]
    assert "longer than 1048576 characters" in default[0]["error_message"]
    allowed = list(iter_rows(source, "url", "caption", [], max_field_chars=2_000_000))
    assert [len(r["caption"]) for r in allowed] == [1_500_000, 9]


# --- Command lines -----------------------------------------------------------------------------------


def message_lines(err: str) -> list[str]:
    """What a command wrote to stderr besides its progress bars (tqdm's "ingest:  40%|...", "select: 0pairs [...")."""
    return [line for part in err.splitlines() for line in part.split("\r")
            if line.strip() and not re.match(r"^[\w-]+: +(\d+%\||[\d.]+\w* \[)", line)]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = message_lines(err)
    assert len(lines) == 1 and lines[0].startswith("altsieve: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def good_csv(tmp_path) -> str:
    path = tmp_path / "in.csv"
    path.write_bytes(csv_lines(*urls(1, 3)))
    return str(path)


def test_cli_bad_input_path(capsys, tmp_path) -> None:
    line = _one_line_error(capsys, ["ingest", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o")])
    assert "nope.csv: no such file" in line


def test_cli_output_is_a_file(capsys, good_csv) -> None:
    line = _one_line_error(capsys, ["ingest", good_csv, "-o", good_csv])
    assert f"output {good_csv} is a file, not a folder" in line


def test_cli_output_under_a_file(capsys, good_csv) -> None:
    line = _one_line_error(capsys, ["run", good_csv, "-o", f"{good_csv}/sub/out"])
    assert f"lies under {good_csv}, which is a file" in line


def test_cli_truncated_gzip_found_inside_the_pipeline(capsys, tmp_path) -> None:
    """The launcher reads only the start of the file: the truncation is met by the worker, inside Beam."""
    path = tmp_path / "t.csv.gz"
    path.write_bytes(truncated_gzip("url,caption\n" + MANY))
    line = _one_line_error(capsys, ["ingest", str(path), "-o", str(tmp_path / "o")])
    assert "t.csv.gz: the compressed stream is truncated or corrupt after line" in line
    assert "(in step ReadPartitions/Plan)" in line


def test_an_error_met_in_worker_processes_is_one_line_on_the_terminal(tmp_path) -> None:
    """Worker processes print nothing of a failed bundle (capsys above sees only the launcher's stderr)."""
    path = tmp_path / "t.csv.gz"
    path.write_bytes(truncated_gzip("url,caption\n" + MANY))
    command = [sys.executable, "-m", "altsieve.pipeline.cli", "ingest", str(path), "-o", str(tmp_path / "o"),
               "--direct_num_workers=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "altsieve: error:" in line]
    assert len(errors) == 1 and "t.csv.gz: the compressed stream is truncated" in errors[0]


def test_cli_bad_option_values(capsys, good_csv, tmp_path) -> None:
    # A config error is one line per problem, each naming the field.
    assert main(["ingest", good_csv, "-o", str(tmp_path / "o"), "--encoding", "klingon"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("altsieve: error: invalid config") and "input.encoding: " in err and "Traceback" not in err
    assert "'klingon' is not an encoding Python knows" in err
    line = _one_line_error(capsys, ["select", "-o", str(tmp_path / "never-ingested")])
    assert "holds no altsieve run" in line


def test_cli_debug_shows_the_traceback(tmp_path) -> None:
    with pytest.raises(InputError):
        main(["--debug", "ingest", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o")])


def test_cli_read_only_output(capsys, good_csv, tmp_path, monkeypatch, tmpfs_mountable) -> None:
    """A read-only file system (a read-only tmpfs where one can be mounted), or a folder without write permission."""
    output = tmp_path / "ro"
    output.mkdir()
    if tmpfs_mountable:
        script = f'mount -t tmpfs -o ro,size=64k tmpfs "{output}" && exec "$0" -m altsieve.pipeline.cli "$@"'
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, sys.executable,
                               "ingest", good_csv, "-o", str(output / "out")], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"altsieve: error: output {output / 'out'} cannot be")
        assert "Read-only file system" in lines[0]
        return
    if os.geteuid() != 0:
        output.chmod(0o500)
        line = _one_line_error(capsys, ["ingest", good_csv, "-o", str(output / "out")])
        assert f"output {output / 'out'} cannot be created (Permission denied)" in line
        return
    # Root, and no mount possible: the file system's answer simulated where the lease is first written.
    import errno

    from altsieve.core import lease

    def read_only(self):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.path)

    monkeypatch.setattr(lease.Lease, "_create_exclusive", read_only)
    line = _one_line_error(capsys, ["ingest", good_csv, "-o", str(output / "out")])
    assert "cannot be written: Read-only file system" in line


def test_cli_a_held_output_names_its_holder(capsys, good_csv, tmp_path) -> None:
    output = tmp_path / "held"
    (output / "_altsieve").mkdir(parents=True)
    holder = {"token": "t", "command": "altsieve run", "host": "other-host", "pid": 4242, "started": 1.7e9,
              "heartbeat": time.time()}
    (output / "_altsieve" / "lease.json").write_text(json.dumps(holder))
    line = _one_line_error(capsys, ["run", good_csv, "-o", str(output)])
    assert re.search(r"in use by another run \(altsieve run on host other-host, pid 4242, started 2023-11-1[45]T", line)


def test_row_estimate_reads_only_the_start_of_a_text_input(tmp_path, monkeypatch) -> None:
    """The progress total: plain Parquet exact, text inputs from size and a 1 MiB sample, never a full read."""
    from altsieve.transforms import read_inputs

    lines = "".join(f"http://e.com/{i}.jpg,caption number {i * 7919 % 100_003}\n" for i in range(120_000))
    big_csv, big_jsonl, small_csv = tmp_path / "big.csv", tmp_path / "big.jsonl.gz", tmp_path / "small.csv"
    big_csv.write_text("url,caption\n" + lines)
    big_jsonl.write_bytes(gzip.compress(MANY_JSON.encode() * 6))
    small_csv.write_bytes(csv_lines(*urls(1, 7)))
    monkeypatch.setattr(read_inputs, "ESTIMATE_SAMPLE_BYTES", 256 * 1024)  # files 4x larger than the sample
    estimates = {path.name: read_inputs.estimate_rows(source)
                 for path in (big_csv, big_jsonl, small_csv) for (source,) in [list_input_files([str(path)])]}
    assert estimates["small.csv"] == (7, True)
    assert abs(estimates["big.csv"][0] - 120_000) / 120_000 < 0.05 and not estimates["big.csv"][1]
    assert abs(estimates["big.jsonl.gz"][0] - 120_000) / 120_000 < 0.05
