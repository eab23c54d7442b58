"""Issue 11 section 1 (and the publish/pull parts of 3 and 6): outputs never destroy what the tool did not write.

Each case runs a writing command (build, publish, pull) as a careless user would and checks the
harness promises: exit code, one ``error:`` line naming the output or file, no traceback, every
file that existed before unchanged, no ``.partial``/``.old`` leftovers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from folder_source import solid, write_folder_source
from hostile import (
    SECRET,
    assert_no_leftovers,
    assert_not_in_tree,
    assert_one_error,
    assert_unchanged,
    invoke,
    snapshot,
)

from concepts import staging

MARKER = ".concepts-output"


def _export(root: Path, n: int = 3) -> Path:
    """A tiny folder-format export: ``n`` 8x8 images with one object mask each."""
    images, masks = {}, {}
    for i in range(n):
        images[f"img{i}.png"] = solid(8, 8, (40 * i % 256, 90, 200))
        mask = np.zeros((8, 8), np.uint8)
        mask[: 2 + i % 5] = 1
        masks[f"img{i}.png"] = mask
    return write_folder_source(root, images, {"object": masks}, {("object", 1): ["tree"]})


def _build(work: Path, out: str | Path, *extra: str) -> None:
    result = invoke(["build", "--from", "export", "-o", out, "--workers", "1", *extra], cwd=work)
    assert result.code == 0, result.stderr


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working folder holding an export, a built dataset, its published form and a user file."""
    work = tmp_path / "work"
    _export(work / "export")
    _build(work, "ds")
    assert invoke(["publish", "ds", "-o", "hf"], cwd=work).code == 0
    (work / "thesis.docx").write_bytes(b"four years of work")
    return work


def _refused(work: Path, args: list[str], *needles: str, cwd: Path | None = None, code: int | None = None) -> str:
    before = snapshot(work)
    result = invoke(args, cwd=cwd or work)
    line = assert_one_error(result, *needles, code=code)
    assert_unchanged(before, snapshot(work))
    assert_no_leftovers(work, *(p for p in work.iterdir() if p.is_dir()))
    return line


# --- section 1: what -o may name ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        (".", "current folder"),
        ("export", "is an input"),
        ("export/images", "lies inside an input"),
        ("thesis.docx", "not a folder"),
        ("..", "contains the current folder"),
    ],
)
def test_build_overwrite_never_replaces_cwd_inputs_or_files(work: Path, out: str, needle: str) -> None:
    line = _refused(work, ["build", "--from", "export", "-o", out, "--overwrite", "--workers", "1"], needle)
    assert "Traceback" not in line


def test_build_refuses_an_output_holding_an_input(work: Path) -> None:
    (work / "inner").mkdir()
    os.rename(work / "export", work / "inner" / "export")
    _refused(work, ["build", "--from", "inner/export", "-o", "inner", "--overwrite", "--workers", "1"],
             "contains an input", code=2)


def test_build_refuses_the_concepts_file_and_links_to_inputs(work: Path) -> None:
    (work / "map.yaml").write_text("object:\n  tree: [tree]\n")
    _refused(work, ["build", "--from", "export", "--concepts", "map.yaml", "-o", "map.yaml", "--overwrite"], "map.yaml")
    (work / "link").symlink_to(work / "export")
    _refused(work, ["build", "--from", "export", "-o", "link", "--overwrite"], "symbolic link")
    # An input reached through a link is still the input (links are resolved before comparing).
    _refused(work, ["build", "--from", "link", "-o", "export", "--overwrite"], "is an input")


def test_build_refuses_home_root_and_mount_points(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = work / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    _refused(work, ["build", "--from", "export", "-o", str(home), "--overwrite"], "home folder", code=2)
    _refused(work, ["build", "--from", "export", "-o", "/", "--overwrite"], "root folder", code=2)
    mount = next((m for m in ("/proc", "/sys", "/dev") if os.path.ismount(m)), None)
    if mount:
        _refused(work, ["build", "--from", "export", "-o", mount, "--overwrite"], "mount point", code=2)


def test_overwrite_needs_the_marker_of_the_same_kind(work: Path) -> None:
    notes = work / "notes"
    notes.mkdir()
    (notes / "draft.txt").write_text("unsaved thoughts")
    _refused(work, ["build", "--from", "export", "-o", "notes", "--overwrite"], "did not write", "remove it yourself")
    # A dataset from before the marker existed: never guessed from its content.
    legacy = work / "legacy"
    legacy.mkdir()
    for name in ("index.csv", "label.csv", "category.csv"):
        shutil.copyfile(work / "ds" / name, legacy / name)
    _refused(work, ["build", "--from", "export", "-o", "legacy", "--overwrite"], MARKER, "remove it yourself")
    # Same marker file name, other kind: a published folder is not a dataset and vice versa.
    _refused(work, ["build", "--from", "export", "-o", "hf", "--overwrite"], "published dataset, not a concept dataset")
    _refused(work, ["publish", "ds", "-o", "export", "--overwrite"], "did not write")
    # A forged marker that is not ours (other tool, bad JSON, a link) is no marker.
    (notes / MARKER).write_text('{"kind": "dataset", "tool": "other"}')
    _refused(work, ["build", "--from", "export", "-o", "notes", "--overwrite"], "did not write")


def test_overwrite_replaces_a_previous_output_of_the_same_kind(work: Path) -> None:
    assert json.loads((work / "ds" / MARKER).read_text()) == {"kind": "dataset", "tool": "concepts",
                                                              "version": json.loads((work / "ds" / MARKER).read_text())["version"]}
    assert json.loads((work / "hf" / MARKER).read_text())["kind"] == "published"
    _refused(work, ["build", "--from", "export", "-o", "ds"], "already exists", "--overwrite")
    (work / "ds" / "index.csv").write_text("damaged")
    _build(work, "ds", "--overwrite")
    assert (work / "ds" / "index.csv").read_text().startswith("image,")
    assert invoke(["publish", "ds", "-o", "hf", "--overwrite"], cwd=work).code == 0
    (work / "empty").mkdir()
    _build(work, "empty")  # an empty folder holds nothing to lose
    assert (work / "empty" / MARKER).is_file()


def test_publish_and_pull_never_write_over_their_input(work: Path) -> None:
    _refused(work, ["pull", "hf", "-o", "hf", "--overwrite"], "is an input")
    _refused(work, ["pull", "hf", "-o", "hf/tables", "--overwrite"], "lies inside an input")
    _refused(work, ["pull", "hf", "-o", ".", "--overwrite"], "current folder")
    _refused(work, ["pull", "hf", "-o", "thesis.docx", "--overwrite"], "not a folder")
    _refused(work, ["publish", "ds", "-o", "ds", "--overwrite"], "is an input")
    _refused(work, ["publish", "ds", "-o", "ds/images", "--overwrite"], "lies inside an input")
    _refused(work, ["publish", "ds", "-o", "thesis.docx", "--overwrite"], "not a folder")
    # pull writes a dataset: --overwrite replaces a pulled or built dataset, never a published one.
    assert invoke(["pull", "hf", "-o", "ds", "--overwrite"], cwd=work).code == 0


def test_a_file_where_a_folder_must_be_is_one_line(work: Path) -> None:
    _refused(work, ["build", "--from", "export", "-o", "thesis.docx/ds"], "thesis.docx/ds", "a file stands where a folder must be")
    _refused(work, ["pull", "hf", "-o", "thesis.docx/deeper/ds"], "a file stands where a folder must be")
    _refused(work, ["publish", "ds", "-o", "thesis.docx/hf"], "a file stands where a folder must be")


# --- atomic replacement -----------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_replacement_swaps_in_one_step_on_linux(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = work / "a", work / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "y").write_text("b")
    assert staging._exchange(a, b)
    assert (a / "y").read_text() == "b" and (b / "x").read_text() == "a"

    def no_fallback(*args: object) -> None:
        raise AssertionError("the two-rename fallback ran although renameat2 is available")

    monkeypatch.setattr(staging, "_replace_by_two_renames", no_fallback)
    _build(work, "ds", "--overwrite")
    assert invoke(["publish", "ds", "-o", "hf", "--overwrite"], cwd=work).code == 0
    assert invoke(["pull", "hf", "-o", "ds", "--overwrite"], cwd=work).code == 0


def test_two_rename_fallback_still_replaces(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "_renameat2", lambda *args: False)
    (work / "ds" / "index.csv").write_text("damaged")
    _build(work, "ds", "--overwrite")
    assert (work / "ds" / "index.csv").read_text().startswith("image,")
    assert_no_leftovers(work)


_DIE = """
import os, sys
from concepts import staging
real_exchange, real_rename = staging._exchange, os.rename
MODE = sys.argv.pop(1)
def exchange(new, out):
    if MODE == "no-exchange":
        return False
    real_exchange(new, out)
    os._exit(9)  # killed right after the swap, before the old output is removed
renames = []
def rename(src, dst):
    real_rename(src, dst)
    renames.append(dst)
    if MODE == "no-exchange" and str(dst).endswith("previous"):
        os._exit(9)  # killed between the fallback's two renames: nothing at the target name
staging._exchange = exchange
staging.os.rename = rename
from concepts.cli import main
sys.argv[0] = "concepts"
main()
"""


def _die_in_replace(work: Path, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONCEPTS_NO_PROGRESS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", _DIE, mode, "build", "--from", "export", "-o", "ds", "--overwrite", "--workers", "1", "--no-color"],
        cwd=work, capture_output=True, text=True, env=env, timeout=120,
    )


def test_killed_after_the_swap_leaves_the_new_output_and_a_leftover_the_next_run_removes(work: Path) -> None:
    proc = _die_in_replace(work, "exchange")
    assert proc.returncode == 9, proc.stderr
    assert (work / "ds" / MARKER).is_file() and "color" not in (work / "ds" / "category.csv").read_text()
    left = [p for p in work.iterdir() if p.name.startswith(".ds.partial-")]
    assert len(left) == 1 and (left[0] / MARKER).is_file(), "the old output waits under the staging name"
    result = invoke(["build", "--from", "export", "-o", "ds", "--overwrite", "--workers", "1"], cwd=work)
    assert result.code == 0 and "removed 1 leftover folder(s)" in result.stderr and left[0].name in result.stderr
    assert_no_leftovers(work)


def test_killed_between_the_fallback_renames_puts_the_old_output_back(work: Path) -> None:
    old = snapshot(work / "ds")
    proc = _die_in_replace(work, "no-exchange")
    assert proc.returncode == 9, proc.stderr
    assert not (work / "ds").exists()
    aside = [p for p in work.iterdir() if p.name.startswith(".ds.old-")]
    assert len(aside) == 1 and (aside[0] / "previous" / MARKER).is_file()
    staging.clean_leftovers(work / "ds")
    assert_unchanged(old, snapshot(work / "ds"))
    assert_no_leftovers(work)


def test_leftovers_are_ours_only_and_locked_runs_are_spared(work: Path) -> None:
    ours = [work / ".ds.partial-abcd1234", work / ".ds.old-zz_9x8y7"]
    for p in ours:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "f").write_text("x")
    keep = [work / ".ds.partial-my-notes", work / ".other.partial-abcd1234"]
    for p in keep:
        p.mkdir()
    (work / ".ds.old-file0000").write_text("a file with our pattern is not ours")
    result = invoke(["build", "--from", "export", "-o", "ds", "--overwrite", "--workers", "1"], cwd=work)
    assert result.code == 0
    info = [line for line in result.stderr.splitlines() if "leftover folder" in line]
    assert len(info) == 1 and info[0].startswith("INFO: removed 2 leftover folder(s)")
    assert not any(p.exists() for p in ours) and all(p.exists() for p in keep)
    assert (work / ".ds.old-file0000").is_file()
    # A run in progress holds a lock on its staging folder: a concurrent clean-up leaves it alone.
    with staging.staged_output(work / "new", kind="dataset", overwrite=False) as tmp:
        assert staging.clean_leftovers(work / "new") == [] and tmp.is_dir()


# --- signals --------------------------------------------------------------------------------------

_SLOW = """
import sys, time
from concepts.builders.folder import FolderBuilder
load = FolderBuilder.load
def slow(self, item):
    time.sleep(0.02)
    return load(self, item)
FolderBuilder.load = slow
from concepts.cli import main
sys.argv[0] = "concepts"
main()
"""


def _slow_build(work: Path, group: bool) -> subprocess.Popen:
    env = {**os.environ, "CONCEPTS_NO_PROGRESS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW, "build", "--from", "big", "-o", "ds", "--overwrite", "--workers", "2"],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=group,
    )


@pytest.mark.parametrize(("sig", "code", "group"), [(signal.SIGTERM, 143, False), (signal.SIGTERM, 143, True),
                                                    (signal.SIGINT, 130, True)])
def test_signal_mid_build_cleans_up_and_keeps_the_previous_output(work: Path, sig: int, code: int, group: bool) -> None:
    _export(work / "big", n=120)
    before = snapshot(work / "ds", work / "export")
    proc = _slow_build(work, group)
    deadline = time.monotonic() + 60
    # Mid-build: the staging folder exists and the workers are busy in its scratch folder.
    while not any(p.name.startswith(".ds.partial-") and (p / ".work").is_dir() and any((p / ".work").iterdir())
                  for p in work.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "error:" not in stderr
    assert_unchanged(before, snapshot(work / "ds", work / "export"))
    assert_no_leftovers(work)


# --- modes ----------------------------------------------------------------------------------------


def _modes(root: Path) -> set[tuple[str, int]]:
    kinds = set()
    for dirpath, dirnames, filenames in os.walk(root):
        kinds.add(("dir", stat.S_IMODE(os.stat(dirpath).st_mode)))
        kinds.update(("file", stat.S_IMODE(os.stat(Path(dirpath, f)).st_mode)) for f in filenames)
    return kinds


@pytest.mark.parametrize(("mask", "dirs", "files"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_honour_the_umask(tmp_path: Path, mask: int, dirs: int, files: int) -> None:
    work = tmp_path / "work"
    _export(work / "export")
    os.chmod(work / "export" / "images" / "img0.png", 0o600)  # copied files do not keep their source's mode
    old = os.umask(mask)
    try:
        _build(work, "ds")
        assert invoke(["publish", "ds", "-o", "hf"], cwd=work).code == 0
        assert invoke(["pull", "hf", "-o", "back"], cwd=work).code == 0
    finally:
        os.umask(old)
    for out in ("ds", "hf", "back"):
        assert _modes(work / out) == {("dir", dirs), ("file", files)}, out


# --- a full or read-only output location ------------------------------------------------------------


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) if path is not None else None)


def test_disk_full_while_building_is_one_line_naming_the_output(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    save = Image.Image.save

    def full(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        if ".partial-" in str(fp):
            raise _enospc(fp)
        save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full)
    # Without the fix the worker counts every image as unreadable and the build goes on.
    line = _refused(work, ["build", "--from", "export", "-o", "new", "--workers", "1"], "new: cannot write the output",
                    "No space left on device")
    assert ".partial-" not in line and not (work / "new").exists()


def test_disk_full_while_writing_tables_keeps_the_old_output(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concepts import unify

    def full(folder: Path, *args: object) -> None:
        raise _enospc(folder / "index.csv")

    monkeypatch.setattr(unify, "write_tables", full)
    _refused(work, ["build", "--from", "export", "-o", "ds", "--overwrite", "--workers", "1"], "ds: cannot write the output")


def test_disk_full_while_publishing_and_pulling(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: object, *args: object, **kwargs: object) -> None:
        # pyarrow's own wording, with no errno attached
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")

    with monkeypatch.context() as m:
        m.setattr(pq.ParquetWriter, "write_table", full)
        _refused(work, ["publish", "ds", "-o", "hf2"], "hf2: cannot write the output", "No space left on device")

    def read_only(self: Path, data: bytes) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    _refused(work, ["pull", "hf", "-o", "back"], "back: cannot write the output", "Read-only file system")


def test_an_unwritable_parent_is_one_line(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def refuse(*args: object, **kwargs: object) -> str:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    _refused(work, ["build", "--from", "export", "-o", "new", "--workers", "1"], "new: cannot be created", "Read-only")


# --- publish and pull read only inside their input (sections 3 and 6) -------------------------------


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    return secret


def test_publish_does_not_follow_links_out_of_the_dataset(work: Path, tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    image = next((work / "ds" / "images").rglob("*.jpg"))
    image.unlink()
    image.symlink_to(secret)
    line = _refused(work, ["publish", "ds", "-o", "hf2"], image.name, "outside the dataset")
    assert not (work / "hf2").exists()
    # A link to a file inside the dataset is the dataset's own file: allowed.
    image.unlink()
    image.symlink_to(next(p for p in (work / "ds" / "images").rglob("*.png")))
    assert invoke(["publish", "ds", "-o", "hf2"], cwd=work).code == 0
    assert_not_in_tree(work / "hf2")
    assert "Traceback" not in line


def test_publish_refuses_a_table_linked_out_of_the_dataset(work: Path, tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    (work / "ds" / "README.txt").unlink()
    (work / "ds" / "README.txt").symlink_to(secret)
    _refused(work, ["publish", "ds", "-o", "hf2"], "README.txt", "outside the dataset")


def test_pull_does_not_follow_links_out_of_the_published_folder(work: Path, tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    (work / "hf" / "tables" / "syns.txt").unlink()
    (work / "hf" / "tables" / "syns.txt").symlink_to(secret)
    _refused(work, ["pull", "hf", "-o", "back"], "syns.txt", "outside the published folder")
    assert not (work / "back").exists()
    shard = next((work / "hf" / "data").glob("*.parquet"))
    (work / "hf" / "tables" / "syns.txt").unlink()
    (work / "hf" / "tables" / "syns.txt").write_text("")
    moved = tmp_path / "outside" / shard.name
    os.rename(shard, moved)
    shard.symlink_to(moved)
    _refused(work, ["pull", "hf", "-o", "back"], shard.name, "outside the published folder")


def test_push_refuses_a_folder_linking_outside(work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    (work / "hf" / "tables" / "extra.txt").symlink_to(_secret(tmp_path))
    _refused(work, ["publish", "hf", "--push", "me/toy"], "extra.txt", "nothing was uploaded")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_parquet_shard_is_one_line_naming_it(work: Path, damage: str) -> None:
    shard = next((work / "hf" / "data").glob("*.parquet"))
    data = shard.read_bytes()
    shard.write_bytes(b"not parquet at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    _refused(work, ["pull", "hf", "-o", "back"], shard.name, "cannot read this Parquet shard")
    assert not (work / "back").exists()
    # Reading in place goes through the same check.
    from concepts.errors import DatasetFormatError
    from concepts.hub import open_hf

    with pytest.raises(DatasetFormatError, match="Parquet shard"):
        open_hf(work / "hf")


@pytest.mark.parametrize("file_first", [True, False])
def test_file_folder_clash_in_pull_is_one_line(work: Path, file_first: bool) -> None:
    shard = next((work / "hf" / "data").glob("*.parquet"))
    table = pq.read_table(shard)
    rows = table.to_pylist()
    assert len(rows) >= 2
    first = rows[0]["image"]["path"]
    clash = first + "/inner.jpg"
    if file_first:
        rows[1]["image"]["path"] = rows[1]["path"] = clash
    else:
        rows[0]["image"]["path"], rows[1]["image"]["path"] = clash, first
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
    _refused(work, ["pull", "hf", "-o", "back"], shard.name, "also a folder")
    assert not (work / "back").exists()


def test_staging_rejects_unknown_kinds_and_reads_markers_carefully(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    with pytest.raises(ValueError):
        staging.write_marker(folder, "thing")
    staging.write_marker(folder, "report")
    assert staging.is_output(folder, "report") and not staging.is_output(folder, "dataset")
    (folder / MARKER).unlink()
    (folder / MARKER).symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text('{"kind": "report", "tool": "concepts"}')
    assert not staging.is_output(folder, "report"), "a linked marker is not ours"
    (folder / MARKER).unlink()
    (folder / MARKER).write_text("[" * 100000)
    assert not staging.is_output(folder, "report")


def test_marker_is_documented(work: Path) -> None:
    doc = textwrap.dedent(staging.__doc__ or "")
    assert MARKER in doc and "--overwrite" in doc and "RENAME_EXCHANGE" in doc and ".NAME.partial-" in doc
