"""Other people's tools read the demo's output with no glue, and the CLI guides a new user.

Each client here is the real package, installed in the test environment: Hugging Face ``datasets``
(the tars, and the output folder by name), ``webdataset``, ``wids``, open_clip's trainer
(``open_clip_train``), ``embedding-reader`` (autofaiss's reader: autofaiss itself requires
numpy < 2) with faiss on clip-retrieval's layout, and img2dataset's own stats logger.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from altsieve.core import fsutil, layout, reasons
from altsieve.core.config import ConfigError, load_config
from altsieve.pipeline import cli
from altsieve.pipeline.demo import demo_config
from altsieve.pipeline.report import next_steps, write_reports
from altsieve.pipeline.reshard import run_reshard
from altsieve.pipeline.select import run_select
from altsieve.testcorpus.generator import generate_corpus
from altsieve.testcorpus.server import CorpusServer
from tests.local_runner import local_pipeline


@pytest.fixture(scope="module")
def demo(demo_run) -> tuple[Path, dict]:
    """`altsieve demo`'s run (conftest.py): the demo recipe, CLIP with the tiny test model, so embeddings too."""
    output, stats = demo_run
    return Path(output), stats


def final_keys(dataset: Path) -> list[str]:
    keys = []
    for path in sorted(dataset.glob("[0-9]*.tar")):
        with tarfile.open(path) as tar:
            keys += [m.name.rsplit(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def sidecars(dataset: Path) -> list[dict]:
    found = []
    for path in sorted(dataset.glob("[0-9]*.tar")):
        with tarfile.open(path) as tar:
            found += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return found


def test_every_sidecar_field_has_one_type_across_samples(demo) -> None:
    dataset, stats = demo
    samples = sidecars(dataset)
    assert len(samples) == stats["output_samples"]
    assert len({tuple(sample) for sample in samples}) == 1  # the same fields in every sample
    for field in samples[0]:
        kinds = {type(sample[field]).__name__ for sample in samples}
        assert len(kinds) == 1, f"{field}: {kinds}"  # never null in one sample and a string in the next
    # img2dataset's conventions: no EXIF is "{}", error_message null; carried input columns are strings
    assert all(sample["exif"] == "{}" or sample["exif"].startswith("{") for sample in samples)
    assert {type(sample["final_url"]) for sample in samples} == {str}
    assert {type(sample["source_id"]) for sample in samples} == {str}


def test_hugging_face_datasets_reads_the_tars_and_the_folder(demo, tmp_path) -> None:
    import datasets

    datasets.disable_progress_bars()
    dataset, stats = demo
    tars = sorted(str(p) for p in dataset.glob("[0-9]*.tar"))
    by_files = datasets.load_dataset("webdataset", data_files=tars, split="train", cache_dir=str(tmp_path / "a"))
    assert by_files.num_rows == stats["output_samples"]
    assert by_files.features["json"]["exif"].dtype == "string"
    assert by_files.features["json"]["final_url"].dtype == "string"
    by_name = datasets.load_dataset(str(dataset), split="train", cache_dir=str(tmp_path / "b"))
    assert by_name.num_rows == stats["output_samples"]
    assert by_name["__key__"] == final_keys(dataset)
    first = by_name[0]
    assert first["jpg"].size == (256, 256) and first["txt"] == first["json"]["caption"]
    card = (dataset / layout.CARD_FILE).read_text()
    assert "recipe `demo`" in card and f"| kept | {stats['funnel']['kept']} |" in card
    assert all(cite in card for cite in load_config("demo").cites)


def test_webdataset_wids_and_open_clip_read_the_shards_with_no_sample_count(demo, tmp_path) -> None:
    import torch
    import webdataset as wds
    import wids
    from open_clip_train.data import get_dataset_size, get_wds_dataset

    dataset, stats = demo
    tars = sorted(str(p) for p in dataset.glob("[0-9]*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "json"))
    assert [key for key, _, _ in samples] == final_keys(dataset)
    indexed = wids.ShardListDataset(str(dataset / layout.WIDS_INDEX_FILE), cache_dir=str(tmp_path / "wids"))
    assert len(indexed) == stats["output_samples"]
    assert [indexed[i]["__key__"] for i in range(len(indexed))] == final_keys(dataset)
    assert indexed[0][".jpg"].size == (256, 256)
    pattern = f"{dataset}/{{00000..{len(tars) - 1:05d}}}.tar"
    assert get_dataset_size(pattern) == (stats["output_samples"], len(tars))
    # The trainer's own loader, without --train-num-samples: it takes the count from sizes.json (it raises
    # "the number of dataset samples must be specified" without). Not iterated here: open_clip_train 3.3's
    # group_by_keys_nothrow fails on the end-of-shard marker that webdataset 0.2.111 (img2dataset's pin) yields,
    # for any tar; the webdataset pipeline above reads the samples.
    args = argparse.Namespace(train_data=pattern, val_data=None, train_num_samples=None, dataset_resampled=False,
                              train_data_upsampling_factors=None, seed=0, batch_size=8, world_size=1, workers=0)
    info = get_wds_dataset(args, lambda image: torch.zeros(3, 8, 8), is_train=True,
                           tokenizer=lambda text: torch.zeros(1, 4, dtype=torch.long))
    assert info.dataloader.num_samples == -(-stats["output_samples"] // 8) * 8


def test_embeddings_in_clip_retrieval_layout_build_a_faiss_index(demo) -> None:
    import faiss
    from embedding_reader import EmbeddingReader

    from altsieve.transforms.clip.store import load_partition_embeddings

    dataset, stats = demo
    root = dataset / layout.EMBEDDINGS_DIR
    assert sorted(p.name for p in root.iterdir()) == ["img_emb", "metadata", "text_emb"]
    # autofaiss reads embeddings through embedding-reader: "parquet_npy" pairs img_emb/*.npy with metadata/*.parquet.
    reader = EmbeddingReader(str(root / "img_emb"), file_format="parquet_npy", metadata_folder=str(root / "metadata"),
                             meta_columns=["key", "image_path", "caption"])
    assert reader.count == stats["output_samples"]
    batches = list(reader(batch_size=1000, show_progress=False))
    image = np.concatenate([emb for emb, _ in batches]).astype("float32")
    keys = [k for _, meta in batches for k in meta["key"]]
    assert keys == final_keys(dataset)  # final shards, final order: no pair later dropped as a duplicate
    text = np.concatenate([np.load(p) for p in sorted((root / "text_emb").glob("*.npy"))]).astype("float32")
    assert text.shape == image.shape
    # The very vectors the ingest saved for those pairs.
    candidate = {}
    for pid in json.loads((dataset / "_altsieve" / "select_done.json").read_text())["partitions"]:
        part_keys, part_image, _ = load_partition_embeddings(str(dataset), pid)
        candidate.update(zip(part_keys.tolist(), part_image.astype("float32"), strict=True))
    assert np.array_equal(image, np.stack([candidate[k] for k in keys]))
    # An index as clip-retrieval builds one (inner product on L2-normalised vectors): each image finds itself.
    index = faiss.IndexFlatIP(image.shape[1])
    index.add(image)
    scores, found = index.search(image, 1)
    assert (scores[:, 0] > 0.99).all() and np.mean(found[:, 0] == np.arange(len(keys))) > 0.95
    # ... and its captions find their images: the tiny model ranks the matching caption first for most pairs.
    _, by_text = index.search(text, 5)
    assert np.mean([i in row for i, row in enumerate(by_text)]) > 0.5


def test_img2dataset_stats_logger_reads_the_final_shard_stats(demo, capsys) -> None:
    from img2dataset.logger import CappedCounter, SpeedLogger

    dataset, stats = demo
    # img2dataset.logger.write_stats's keys
    img2dataset_keys = {"count", "successes", "failed_to_download", "failed_to_resize", "duration", "start_time",
                        "end_time", "status_dict"}
    total, status = SpeedLogger("total", enable_wandb=False), CappedCounter()
    for path in sorted(dataset.glob("[0-9]*_stats.json")):  # what img2dataset's LoggerProcess does per file
        shard = json.loads(path.read_text())
        assert img2dataset_keys <= set(shard)
        assert shard["duration"] == pytest.approx(shard["end_time"] - shard["start_time"])
        total(count=shard["count"], success=shard["successes"], failed_to_download=shard["failed_to_download"],
              failed_to_resize=shard["failed_to_resize"], start_time=shard["start_time"], end_time=shard["end_time"])
        status.update(CappedCounter.load(shard["status_dict"]))
    total.sync()
    assert "success: 0.670" in capsys.readouterr().out  # img2dataset's own line: 67 of 100 input pairs
    # Every input row counted once, in img2dataset's statuses, as stats.json counts the reasons.
    by_status = Counter()
    for reason, count in stats["reasons"].items():
        by_status[reasons.status_for(reason)] += count
    assert (total.count, total.success) == (100, stats["output_samples"])
    assert total.failed_to_download == by_status[reasons.STATUS_FAILED_TO_DOWNLOAD] > 0
    assert total.failed_to_resize == by_status[reasons.STATUS_FAILED_TO_RESIZE] > 0
    assert status.dump()["success"] == stats["output_samples"]
    assert sum(status.dump().values()) == 100


def test_parquet_output_format_carries_the_images(demo, tmp_path) -> None:
    """output.format parquet: img2dataset's parquet output, image bytes beside the metadata; no tar."""
    import datasets

    datasets.disable_progress_bars()
    dataset, stats = demo
    copy = tmp_path / "parquet"
    for name in (layout.CANDIDATES_DIR, layout.DECISIONS_DIR, layout.META_DIR):
        shutil.copytree(dataset / name, copy / name)
    config = demo_config("demo", [{"output": {"format": "parquet"}}])
    metrics = run_reshard(config, str(copy), [])
    write_reports(config, str(copy), metrics, 0.0)
    assert not list(copy.glob("*.tar")) and not (copy / layout.SIZES_FILE).exists()
    rows = [r for p in sorted(copy.glob("[0-9]*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert [r["key"] for r in rows] == final_keys(dataset)
    assert all(Image.open(io.BytesIO(r["jpg"])).size == (256, 256) for r in rows)
    loaded = datasets.load_dataset(str(copy), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == stats["output_samples"] and "jpg" in loaded.column_names


def _pass_outputs(folder: Path) -> dict[str, bytes]:
    """What select and reshard write (decisions, final shards, embeddings, indexes, plan), timings left out."""
    written = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if not path.is_file() or relative.startswith((layout.CANDIDATES_DIR, "README", "manifest", "stats.json",
                                                      "summary")) or path.name in ("config.yaml", "inputs.json",
                                                                                   "ingest_done.json",
                                                                                   "clip_model.json"):
            continue
        data = path.read_bytes()
        if path.name.endswith("_stats.json"):
            stats = json.loads(data)
            for timing in ("start_time", "end_time", "duration"):
                stats.pop(timing)
            data = json.dumps(stats, sort_keys=True).encode()
        written[relative] = data
    return written


def test_run_writes_what_select_then_reshard_write(demo, tmp_path) -> None:
    """altsieve run's select and reshard are one pipeline (the demo's run); apart, the two passes write the same."""
    dataset, _ = demo
    apart = tmp_path / "apart"
    shutil.copytree(dataset / layout.CANDIDATES_DIR, apart / layout.CANDIDATES_DIR)
    shutil.copytree(dataset / layout.META_DIR, apart / layout.META_DIR)
    for done in ("select_done.json", "reshard_plan.json"):
        (apart / layout.META_DIR / done).unlink()
    config = demo_config("demo")
    run_select(config, str(apart), [])
    run_reshard(config, str(apart), [])
    fused = _pass_outputs(dataset)
    assert any(name.endswith(".tar") for name in fused) and any(name.startswith("_decisions") for name in fused)
    assert layout.META_DIR + "/select_done.json" in fused
    assert _pass_outputs(apart) == fused


def test_a_run_stopped_in_its_reshard_part_is_resumed_by_reshard(demo, tmp_path, monkeypatch) -> None:
    """select_done.json is written once every decision is, before any final shard."""
    from altsieve.pipeline import reshard

    dataset, _ = demo
    copy = tmp_path / "stopped"
    shutil.copytree(dataset / layout.CANDIDATES_DIR, copy / layout.CANDIDATES_DIR)
    shutil.copytree(dataset / layout.META_DIR, copy / layout.META_DIR)
    (copy / layout.META_DIR / "select_done.json").unlink()
    config = demo_config("demo")

    def stop(self, element):
        raise RuntimeError("stopped while writing a final shard")

    with monkeypatch.context() as patched:
        patched.setattr(reshard._WriteFinalShard, "process", stop)
        with pytest.raises(Exception, match="stopped while writing a final shard"):
            reshard.run_select_and_reshard(config, str(copy), [])
    assert (copy / layout.META_DIR / "select_done.json").exists() and not list(copy.glob("*.tar"))
    run_reshard(config, str(copy), [])
    assert _pass_outputs(copy) == _pass_outputs(dataset)


def test_the_end_of_a_run_says_where_and_what_next(demo) -> None:
    dataset, stats = demo
    lines = "\n".join(next_steps(str(dataset), stats, demo_config("demo"), ["urls.parquet"]))
    assert f"output: {dataset}" in lines and f"altsieve audit {dataset} --report" in lines
    assert f"--train-data '{dataset}/{{00000..00002}}.tar'" in lines
    assert "--retry-failed" in lines  # the demo has timeouts, 5xx and 429s
    assert "--allow-private-addresses" not in lines  # one blocked redirect of 96 fetches is no setup matter


def test_an_all_blocked_loopback_input_names_the_flag(tmp_path, capsys) -> None:
    corpus = generate_corpus(n_pairs=8, seed=0, label_counts={})
    with CorpusServer(corpus) as server:
        corpus.write_input(str(tmp_path / "urls.parquet"), server.base_url)
        code = cli.main(["run", str(tmp_path / "urls.parquet"), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "8 of 8 fetches were refused" in out and "loopback" in out
    assert "--allow-private-addresses 127.0.0.1/32" in out
    assert not (tmp_path / "out" / layout.META_DIR / "progress").exists()  # the progress files are gone


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {a.dest}", a, sub) for a in sub._actions)
        else:
            yield "altsieve " + action.dest, action, parser


def test_every_flag_has_help_and_says_its_default() -> None:
    parser = cli.build_parser()
    checked = 0
    for name, action, _ in _actions(parser):
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{name} has no help text"
        optional = bool(action.option_strings) and not action.required
        if optional and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            assert "default" in action.help.lower(), f"{name}: help does not say its default"
        checked += 1
    assert checked > 60


def test_help_ends_with_examples_and_the_beam_note(capsys) -> None:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("altsieve", parser), *subparsers.choices.items()]:
        text = sub.format_help()
        assert "example" in text.split("options:")[-1], name
        if name not in ("recipes", "audit", "serve-testcorpus"):
            assert "goes to Apache Beam unchanged" in text, name
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert capsys.readouterr().out.rstrip().endswith("is an error.")


def test_the_altsieve_command_flushes_its_output_and_runs_its_exit_handlers(tmp_path) -> None:
    # cli.entry ends the process without the interpreter's teardown: what was printed and every exit handler
    # (the fork server's stop among them) must still happen, and the status is main()'s.
    script = ("import atexit, sys\nfrom altsieve.pipeline import cli\n"
              "atexit.register(lambda: print('exit handlers ran'))\nsys.argv[1:] = {args!r}\ncli.entry()")
    done = subprocess.run([sys.executable, "-c", script.format(args=["recipes"])], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "exit handlers ran"
    assert {line.split()[0] for line in lines[:-1]} >= {"default", "laion400m", "wukong"}
    missing = str(tmp_path / "nothing.parquet")
    failed = subprocess.run([sys.executable, "-c", script.format(args=["run", missing, "-o", str(tmp_path / "o")])],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [f"altsieve: error: input {missing}: no such file"]
    assert failed.stdout == "exit handlers ran\n"


def test_a_closed_pipe_ends_the_command_silently_as_sigpipe_would() -> None:
    """`altsieve recipes | head`: the reader goes away before the output is written."""
    process = subprocess.Popen([sys.executable, "-m", "altsieve", "recipes", "default"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # before the command has imported what it needs to print anything
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGPIPE and errors == b"", errors[-2000:]


def test_a_folder_named_like_a_recipe_never_shadows_it(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "default").write_text("not: a recipe\n")
    assert load_config("demo").name == "demo" and load_config("default").name == "default"
    with pytest.raises(ConfigError, match="is a folder"):
        load_config("./demo")
    (tmp_path / "mine.yaml").write_text("name: mine\nbase: default\n")
    assert load_config("mine.yaml").name == "mine"
    with pytest.raises(ConfigError, match="write ./mine"):
        (tmp_path / "mine").write_text("name: mine\n")
        load_config("mine")


def test_progress_counts_pairs_per_partition_as_they_go(tmp_path) -> None:
    """A one-partition run's bar moves with its pairs: the workers' counts, summed by the launcher."""
    import apache_beam as beam

    from altsieve.pipeline.beam_run import Progress
    from altsieve.transforms.progress import CountRecords, ProgressReader

    records = [{"key": f"{i:03d}", "partition_id": "p0", "partition_size": 40} for i in range(40)]
    records += [{"key": f"{i:03d}", "partition_id": "p1", "partition_size": 3} for i in range(3)]
    with Progress("test", str(tmp_path), "ingest", total=43) as progress:
        with local_pipeline() as pipeline:
            _ = pipeline | beam.Create(records) | CountRecords(str(tmp_path), "ingest")
        totals = ProgressReader(str(tmp_path), "ingest").totals()
        assert (totals["pairs"], totals["items"], totals["done"]) == (43, 2, 2)
        progress._poll()
        assert progress._bar.n == 43
    assert not (tmp_path / layout.META_DIR).exists()  # nothing left behind


def test_progress_in_a_log_file_has_no_cursor_moves_and_ends_passes_in_order(tmp_path, monkeypatch) -> None:
    """Two bars at once (select and reshard of `altsieve run`) written to a log, not a terminal: plain lines, no
    ESC [A to reach a second bar's line, and the pass finished first ends first."""
    from altsieve.pipeline.beam_run import Progress
    from altsieve.transforms.progress import ProgressWriter

    log = io.StringIO()  # not a tty
    monkeypatch.setattr(sys, "stderr", log)
    with Progress("first", str(tmp_path), "select", total=3) as first, \
            Progress("second", str(tmp_path), "reshard", total=5) as second:
        ProgressWriter(str(tmp_path), "select").update("p0", 3, done=True)
        ProgressWriter(str(tmp_path), "reshard").update("s0", 5, done=True)
        Progress.finish_in_order(first, second)
    text = log.getvalue()
    assert "\x1b" not in text
    finals = [line.split(":")[0] for line in text.replace("\r", "\n").splitlines() if "100%" in line]
    assert finals == ["first", "second"]
    assert "3/3" in text and "5/5" in text


# ---------------------------------------------------------------------------------------------------------------------
# The shards' tar writer and reader (core.fsutil, faster than tarfile)

TAR_MEMBERS = [("000000001.jpg", b"\xff\xd8" * 700), ("000000001.txt", "héllo".encode()), ("000000001.json", b"{}"),
               ("a" * 120 + ".jpg", b"long name"), ("ünïcode.txt", b"u"), ("empty.txt", b"")]


def _tarfile_bytes(members: list[tuple[str, bytes]], tar_format: int, directory: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            tar.addfile(info, io.BytesIO(payload))
        if directory:
            info = tarfile.TarInfo("folder")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    return buffer.getvalue()


def test_tar_writer_writes_the_bytes_tarfile_writes() -> None:
    buffer = io.BytesIO()
    with fsutil.TarWriter(buffer) as tar:
        for name, payload in TAR_MEMBERS:
            tar.add(name, payload)
    assert buffer.getvalue() == _tarfile_bytes(TAR_MEMBERS, tarfile.PAX_FORMAT)  # long and non-ASCII names too
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == TAR_MEMBERS  # type: ignore[union-attr]


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_reads_what_tarfile_writes(tar_format: int) -> None:
    members = TAR_MEMBERS if tar_format != tarfile.USTAR_FORMAT else TAR_MEMBERS[:3] + TAR_MEMBERS[4:]
    data = _tarfile_bytes(members, tar_format, directory=True)
    assert list(fsutil.iter_tar_files(io.BytesIO(data))) == members  # the folder is no file


def test_a_damaged_tar_is_a_read_error_naming_it() -> None:
    data = _tarfile_bytes(TAR_MEMBERS[:3], tarfile.PAX_FORMAT)
    with pytest.raises(tarfile.ReadError, match="shard.tar: cut short inside a member"):
        list(fsutil.iter_tar_files(io.BytesIO(data[:1000]), "shard.tar"))
    garbled = bytearray(data)
    garbled[10] ^= 0xFF  # a byte of the first header's name
    with pytest.raises(tarfile.ReadError, match="shard.tar: bad header checksum"):
        list(fsutil.iter_tar_files(io.BytesIO(bytes(garbled)), "shard.tar"))


def test_tar_entries_copied_whole_make_the_tar_of_their_members() -> None:
    """TarWriter.copy of iter_tar_entries' spans (PAX headers of long and non-ASCII names included) gives the bytes
    TarWriter writes for those members, read with payloads or without."""
    buffer = io.BytesIO()
    with fsutil.TarWriter(buffer) as tar:
        for name, payload in TAR_MEMBERS:
            tar.add(name, payload)
    chosen = [1, 2, 3, 4]  # a run from the middle, long and non-ASCII names in it
    for payloads in (True, False):
        buffer.seek(0)
        entries = list(fsutil.iter_tar_entries(buffer, payloads=payloads))
        assert [e.name for e in entries] == [name for name, _ in TAR_MEMBERS]
        assert [e.payload for e in entries] == ([p for _, p in TAR_MEMBERS] if payloads else [None] * len(entries))
        copied = io.BytesIO()
        with fsutil.TarWriter(copied) as tar:
            for index in chosen:
                tar.copy(buffer, entries[index].start, entries[index].end)
        expected = io.BytesIO()
        with fsutil.TarWriter(expected) as tar:
            for index in chosen:
                tar.add(*TAR_MEMBERS[index])
        assert copied.getvalue() == expected.getvalue()


@pytest.mark.parametrize("kernel", ["copy_file_range", "refused (EXDEV)", "absent"])
def test_tar_entries_copied_between_local_files_are_the_same_bytes(tmp_path, monkeypatch, kernel: str) -> None:
    """Between local files TarWriter.copy lets the kernel copy (os.copy_file_range); where it refuses or is not
    there, the bytes are read and written: the same tar either way, headers added around the copies in place."""
    source_path = tmp_path / "candidates.tar"
    with open(source_path, "wb") as handle, fsutil.TarWriter(handle) as tar:
        for name, payload in TAR_MEMBERS:
            tar.add(name, payload)
    with open(source_path, "rb") as handle:
        entries = list(fsutil.iter_tar_entries(handle, payloads=False))
    calls = []
    if kernel == "absent":
        monkeypatch.delattr(fsutil.os, "copy_file_range")
    else:
        real = fsutil.os.copy_file_range

        def copy_file_range(*args: int) -> int:
            calls.append(args)
            if kernel.startswith("refused"):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(*args)

        monkeypatch.setattr(fsutil.os, "copy_file_range", copy_file_range)
    target_path = tmp_path / "final.tar"
    with open(source_path, "rb") as source, open(target_path, "wb") as handle, fsutil.TarWriter(handle) as tar:
        tar.add("first.txt", b"added before")
        tar.copy(source, entries[1].start, entries[3].end)
        tar.add("between.txt", b"added between")
        tar.copy(source, entries[4].start, entries[4].end)
    expected = io.BytesIO()
    with fsutil.TarWriter(expected) as tar:
        tar.add("first.txt", b"added before")
        for index in (1, 2, 3):
            tar.add(*TAR_MEMBERS[index])
        tar.add("between.txt", b"added between")
        tar.add(*TAR_MEMBERS[4])
    assert target_path.read_bytes() == expected.getvalue()
    assert len(calls) == {"copy_file_range": 2, "refused (EXDEV)": 1, "absent": 0}[kernel]  # a refusal: never again


def _candidate_shard(tmp_path: Path, keys: list[str]) -> str:
    """A candidate shard of ``keys`` (one without an image, which the tar leaves out), as ingest writes it."""
    from altsieve.transforms.shards import write_shard

    records = [{"key": key, "partition_id": "00000_0000000000", "caption": f"caption {key}", "reason": None,
                "image": None if key.endswith("3") else b"\xff\xd8" + key.encode() * (40 + 90 * i)}
               for i, key in enumerate(keys)]
    prefix = str(tmp_path / "candidate")
    write_shard(prefix, records, [], "jpg", 0.0, indexed=True)
    return prefix


def test_a_candidate_shards_parquet_says_where_each_sample_lies_in_its_tar(tmp_path) -> None:
    """The tar index in a candidate Parquet's footer is what reading the tar's headers finds: each sample's three
    entries from its first header to its last padding; a sample without an image is not in it."""
    from altsieve.transforms.shards import tar_index

    keys = [f"{i:015d}" for i in range(6)]
    prefix = _candidate_shard(tmp_path, keys)
    spans: dict[str, list[int]] = {}
    with open(f"{prefix}.tar", "rb") as handle:
        for entry in fsutil.iter_tar_entries(handle, payloads=False):
            key = entry.name.rpartition(".")[0]
            spans.setdefault(key, [entry.start, entry.end])[1] = entry.end
    index = tar_index(pq.read_schema(f"{prefix}.parquet"))
    assert index == {key: tuple(span) for key, span in spans.items()}
    assert set(index) == set(keys) - {keys[3]}


def test_final_tars_copied_by_the_index_are_those_copied_by_reading_headers(tmp_path) -> None:
    """write_final_tar with the candidate's index and without it (candidates an older altsieve wrote): the same
    bytes, gaps between kept samples included; a key the index lacks, or an index of another tar, is an error."""
    from altsieve.transforms.shards import tar_index, write_final_tar

    keys = [f"{i:015d}" for i in range(8)]
    prefix = _candidate_shard(tmp_path, keys)
    index = tar_index(pq.read_schema(f"{prefix}.parquet"))
    assert index is not None
    kept = [keys[0], keys[1], keys[4], keys[6], keys[7]]  # two runs and a lone one
    finals = []
    for given in (index, None):
        buffer = io.BytesIO()
        assert write_final_tar(buffer, [(f"{prefix}.tar", kept, given)]) == len(kept)
        finals.append(buffer.getvalue())
    assert finals[0] == finals[1]
    with tarfile.open(fileobj=io.BytesIO(finals[0])) as tar:
        assert sorted({m.name.rpartition(".")[0] for m in tar}) == kept
    with pytest.raises(RuntimeError, match=f"lacks the image of kept pair {keys[3]}"):
        write_final_tar(io.BytesIO(), [(f"{prefix}.tar", [keys[2], keys[3]], index)])
    shifted = {key: (start + 512, end + 512) for key, (start, end) in index.items()}  # no header there
    swapped = {**index, keys[0]: index[keys[1]]}  # another sample's header there
    for wrong in (shifted, swapped):
        with pytest.raises(RuntimeError, match=f"does not match its Parquet's tar index at pair {keys[0]}"):
            write_final_tar(io.BytesIO(), [(f"{prefix}.tar", kept, wrong)])


def test_final_shards_are_what_the_shard_writer_makes_of_the_candidates_rows(demo, tmp_path) -> None:
    """Reshard copies the kept samples' tar entries from the candidate shards as they are; the final shards are
    byte for byte what write_shard writes from the candidates' Parquet rows and images (as reshard once did)."""
    from altsieve.transforms.shards import iter_tar_images, read_parquet_rows, rows_to_records, write_shard

    dataset, _ = demo
    extra = list(load_config(str(dataset / layout.META_DIR / "config.yaml")).input.save_additional_columns)
    rows, images = {}, {}
    for parquet in sorted((dataset / "_candidates").glob("*.parquet")):
        found = {row["key"]: row for row in read_parquet_rows(str(parquet))}
        rows.update(found)
        images.update(iter_tar_images(str(parquet.with_suffix(".tar")), set(found)))
    finals = sorted(dataset.glob("[0-9]*.tar"))
    assert finals
    shown_gap = False
    for final in finals:
        keys = [row["key"] for row in read_parquet_rows(str(final.with_suffix(".parquet")))]
        # Samples of the candidate tars that select dropped, between kept ones: the runs are copied apart.
        shown_gap = shown_gap or sum(keys[0] <= key <= keys[-1] for key in images) > len(keys)
        records = rows_to_records([rows[key] for key in keys], extra)
        for record in records:
            record["image"] = images[record["key"]]
        write_shard(str(tmp_path / final.stem), records, extra, "jpg", 0.0)  # as a final shard: no tar index
        assert (tmp_path / final.name).read_bytes() == final.read_bytes()
        assert (tmp_path / f"{final.stem}.parquet").read_bytes() == final.with_suffix(".parquet").read_bytes()
    assert shown_gap


def test_sidecars_hold_the_values_the_parquet_holds(tmp_path) -> None:
    """A tar's sidecar carries a value as its Parquet column stores it (a float32 score), so a final shard that
    copies a candidate's entries holds what it would write from the candidate's rows."""
    from altsieve.transforms.shards import write_shard

    record = {"key": "000000000000000", "partition_id": "00000_0000000000", "caption": "a cat", "reason": None,
              "language_score": 0.1, "image": b"\xff\xd8jpeg"}
    write_shard(str(tmp_path / "shard"), [record], [], "jpg", 0.0)
    stored = pq.read_table(tmp_path / "shard.parquet").column("language_score")[0].as_py()
    assert stored != 0.1  # float32
    with tarfile.open(tmp_path / "shard.tar") as tar:
        sidecar = json.loads(tar.extractfile("000000000000000.json").read())  # type: ignore[union-attr]
    assert sidecar["language_score"] == stored
