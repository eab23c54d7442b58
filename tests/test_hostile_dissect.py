"""Hostile inputs to ``concepts dissect``, ``report`` and ``agreement`` (issue 11, sections 1, 2, 3 and 6).

Each case checks the harness's promises: exit code, one ``error:`` line naming the file or value,
no traceback, files that existed before unchanged, no marker created by malicious content, nothing
from outside the input in the output, and no staging leftovers.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from concepts.dissect.features import FeatureStore
from concepts.dissect.tally import Tally
from hostile import SECRET, assert_no_leftovers, assert_one_error, assert_unchanged, invoke, snapshot
from synth import toy_dataset

BASE = ["--model", "synth:red_unit_net", "--normalize", "none", "--quantile", "0.1", "--workers", "0", "--top-k", "2"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n=6)


@pytest.fixture(scope="module")
def finished(toy, tmp_path_factory) -> Path:
    """A finished run of layer conv, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", out])
    assert done.code == 0, done.stderr
    return out


def _copy_run(finished: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def _edit_record(run: Path, change) -> None:
    record = json.loads((run / "run.json").read_text())
    change(record)
    (run / "run.json").write_text(json.dumps(record))


class _Evil:
    """Unpickling this creates ``path`` (what a malicious checkpoint would do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.path), SECRET))


# -- section 2: no code runs because a file said so -----------------------------------------------


def test_report_does_not_import_the_factory_run_json_names(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    marker = tmp_path / "factory-ran"
    (tmp_path / "evil_factory_mod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text({SECRET!r})\n"
        "def build(num_classes=3):\n    from synth import red_unit_net\n    return red_unit_net()\n"
    )
    name = "evil_factory_mod:build"

    def change(record):
        record["args"]["model"] = name
        record["args"]["trust_pickle"] = True
        for entry in record["layers"].values():
            entry["params"]["model"] = name

    _edit_record(run, change)
    before = snapshot(run)
    # The report draws from the maps the run stored: it never needs, so never imports, the model.
    assert invoke(["report", run, "-o", tmp_path / "rep0"], cwd=tmp_path).code == 0
    assert not marker.exists()
    # Redrawing with the model (--recompute) is where consent is asked.
    out = invoke(["report", run, "-o", tmp_path / "rep", "--recompute"], cwd=tmp_path)
    line = assert_one_error(out, "run.json", name, "--trust-model-code", "--no-images")
    assert "runs its code" in line
    assert not marker.exists()
    assert not (tmp_path / "rep").exists()
    assert_unchanged(before, snapshot(run))
    assert_no_leftovers(tmp_path)
    # Without images nothing needs the model: the report is written, still without importing it.
    assert invoke(["report", run, "-o", tmp_path / "rep", "--no-images"], cwd=tmp_path).code == 0
    assert not marker.exists()
    # The consent on the command line is what imports it (so the planted module really would run).
    assert invoke(["report", run, "-o", tmp_path / "rep2", "--recompute", "--trust-model-code"], cwd=tmp_path).code == 0
    assert marker.read_text() == SECRET


def test_report_does_not_unpickle_weights_because_run_json_trusts_them(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    marker = tmp_path / "pickle-ran"
    weights = tmp_path / "evil.pth"
    torch.save({"state_dict": _Evil(marker)}, weights)

    def change(record):
        record["args"].update(model="alexnet", weights=str(weights), trust_pickle=True)
        for entry in record["layers"].values():
            entry["params"]["model"] = "alexnet"  # a torchvision name: allowed, it is not code

    _edit_record(run, change)
    out = invoke(["report", run, "-o", tmp_path / "rep", "--recompute"])
    assert_one_error(out, str(weights), "--trust-pickle", "--no-images")
    assert not marker.exists()
    assert not (tmp_path / "rep").exists()
    # The file is a working exploit: a plain unpickle runs it.
    torch.load(weights, weights_only=False)
    assert marker.read_text() == SECRET


def test_report_does_not_load_torchscript_run_json_names(finished, tmp_path, monkeypatch):
    from synth import red_unit_net

    run = _copy_run(finished, tmp_path)
    scripted = tmp_path / "net.pt"
    torch.jit.script(red_unit_net()).save(str(scripted))
    def change(record):
        record["args"].update(model="alexnet", weights=str(scripted))
        record["layers"]["conv"]["params"]["model"] = "alexnet"

    _edit_record(run, change)
    loads = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a))
    out = invoke(["report", run, "-o", tmp_path / "rep", "--recompute"])
    assert_one_error(out, str(scripted), "TorchScript", "--trust-model-code", "--no-images")
    assert not loads and not (tmp_path / "rep").exists()


def test_object_array_thresholds_are_never_unpickled(toy, tmp_path):
    marker = tmp_path / "npy-ran"
    np.save(tmp_path / "t.npy", np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    out = invoke(["dissect", toy, *BASE, "--layer", "pool", "--thresholds", tmp_path / "t.npy", "-o", tmp_path / "o"])
    assert_one_error(out, "t.npy", "cannot read thresholds", code=2)
    assert not marker.exists() and not (tmp_path / "o").exists()


# -- section 3: nothing read from outside the run folder ------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.csv", "sub/../../outside.csv", "link.csv"])
def test_report_reads_result_files_only_inside_the_run(finished, tmp_path, name):
    run = _copy_run(finished, tmp_path)
    outside = tmp_path / "outside.csv"
    outside.write_text((run / "tally_conv.csv").read_text().replace("square", SECRET))
    (run / "link.csv").symlink_to(outside)
    _edit_record(run, lambda r: r["layers"]["conv"]["files"].update(tally=name))
    out = invoke(["report", run, "-o", tmp_path / "rep", "--no-images"])
    assert_one_error(out, "run.json", "layers.conv.files.tally", "outside the run folder")
    assert not (tmp_path / "rep").exists()


def test_report_refuses_a_result_file_that_links_outside(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    outside = tmp_path / "secret.csv"
    outside.write_text((run / "tally_conv.csv").read_text().replace("square", SECRET))
    (run / "tally_conv.csv").unlink()
    (run / "tally_conv.csv").symlink_to(outside)
    out = invoke(["report", run, "-o", tmp_path / "rep", "--no-images"])
    assert_one_error(out, "run.json", "outside the run folder")
    assert not (tmp_path / "rep").exists()


# -- section 1: the dissection folder and the report folder ---------------------------------------


def test_dissect_refuses_a_folder_it_did_not_write(toy, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("my work")
    before = snapshot(mine)
    out = invoke(["dissect", toy, *BASE, "--layer", "pool", "-o", mine])
    assert_one_error(out, str(mine), "did not write")
    assert_unchanged(before, snapshot(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.tex"]


def test_dissect_and_report_refuse_an_existing_file(toy, finished, tmp_path):
    doc = tmp_path / "thesis.docx"
    doc.write_text("my work")
    before = snapshot(doc)
    assert_one_error(invoke(["dissect", toy, *BASE, "--layer", "pool", "-o", doc]), str(doc), "not a folder")
    assert_one_error(invoke(["report", finished, "-o", doc, "--no-images"]), str(doc), "not a folder")
    assert_one_error(invoke(["report", finished, "-o", doc, "--no-images", "--overwrite"]), str(doc), "not a folder")
    assert_unchanged(before, snapshot(doc))


@pytest.mark.parametrize("where", ["dataset", "inside-dataset", "parent-of-dataset", "weights"])
def test_dissect_output_is_never_an_input(toy, tmp_path, where):
    ds = tmp_path / "ds"
    shutil.copytree(toy, ds)
    weights = tmp_path / "w" / "net.pth"
    weights.parent.mkdir()
    from synth import red_unit_net

    torch.save(red_unit_net().state_dict(), weights)
    target = {"dataset": ds, "inside-dataset": ds / "images" / "out", "parent-of-dataset": tmp_path, "weights": weights}[where]
    before = snapshot(tmp_path)
    out = invoke(["dissect", ds, *BASE, "--weights", weights, "--layer", "pool", "-o", target])
    assert_one_error(out, str(target))
    assert_unchanged(before, snapshot(tmp_path))
    assert not (ds / "images" / "out").exists() and not (ds / "run.json").exists()


def test_dissect_resumes_a_run_from_before_markers(finished, toy, tmp_path):
    run = _copy_run(finished, tmp_path)
    (run / ".concepts-output").unlink()
    out = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run])
    assert out.code == 0, out.stderr
    assert json.loads((run / "run.json").read_text())["recomputed"] == []


def test_report_output_is_staged_and_replaces_only_a_report(finished, tmp_path):
    rep = tmp_path / "rep"
    assert invoke(["report", finished, "-o", rep, "--no-images"]).code == 0
    first = snapshot(rep)
    assert (rep / ".concepts-output").is_file()
    assert_one_error(invoke(["report", finished, "-o", rep, "--no-images"]), str(rep), "--overwrite")
    assert_unchanged(first, snapshot(rep))
    assert invoke(["report", finished, "-o", rep, "--no-images", "--overwrite"]).code == 0
    assert_no_leftovers(tmp_path)
    # A run folder is an input: a report may go into its report/ folder, nowhere else inside it.
    before = snapshot(finished)
    assert_one_error(invoke(["report", finished, "-o", finished / "tables", "--no-images"]), "input")
    assert_one_error(invoke(["report", finished, "-o", finished, "--no-images", "--overwrite"]), "input")
    assert_unchanged(before, snapshot(finished))
    run = _copy_run(finished, tmp_path)
    assert invoke(["report", run, "-o", run / "report", "--no-images"]).code == 0
    assert (run / "report" / "index.html").is_file()


def test_dissect_report_replaces_its_own_report(toy, tmp_path):
    out = tmp_path / "run"
    for _ in range(2):
        done = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", out, "--report"])
        assert done.code == 0, done.stderr
    assert (out / "report" / "conv.html").is_file()
    assert_no_leftovers(out)


def test_interrupted_force_rerun_keeps_the_finished_layer(finished, toy, tmp_path, monkeypatch):
    run = _copy_run(finished, tmp_path)
    results = {p: h for p, h in snapshot(run).items() if not p.endswith("run.json")}
    entry = json.loads((run / "run.json").read_text())["layers"]["conv"]
    with monkeypatch.context() as m:
        calls = []

        def stop(*args, **kwargs):
            calls.append(1)
            raise KeyboardInterrupt

        m.setattr(Tally, "update", stop)
        out = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run, "--force"])
    assert out.code == 130 and calls
    assert json.loads((run / "run.json").read_text())["layers"]["conv"] == entry
    assert_unchanged(results, snapshot(run))
    rep = invoke(["report", run, "-o", tmp_path / "rep", "--no-images"])
    assert rep.code == 0, rep.stderr
    # The plain rerun has nothing to do; a forced one resumes from what the interrupted one saved.
    again = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run])
    assert again.code == 0 and json.loads((run / "run.json").read_text())["recomputed"] == []
    assert_unchanged(results, snapshot(run))


def test_forced_rerun_resumes_and_changed_arguments_keep_old_entry(finished, toy, tmp_path, monkeypatch):
    run = _copy_run(finished, tmp_path)
    entry = json.loads((run / "run.json").read_text())["layers"]["conv"]
    with monkeypatch.context() as m:
        m.setattr(Tally, "update", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run, "--iou-threshold", "0.5"]).code == 130
    assert json.loads((run / "run.json").read_text())["layers"]["conv"] == entry
    forward = []
    original = FeatureStore._forward
    monkeypatch.setattr(FeatureStore, "_forward", lambda self, *a, **k: forward.append(1) or original(self, *a, **k))
    done = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run, "--iou-threshold", "0.5"])
    assert done.code == 0, done.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["layers"]["conv"]["params"]["iou_threshold"] == 0.5 and record["resumed"]["thresholds"]
    assert not forward  # the forward pass was not redone
    assert not (run / ".partial").exists()


def test_interrupt_while_results_move_in_is_finished_by_the_next_run(finished, toy, tmp_path, monkeypatch):
    import concepts.dissect.run as run_mod

    run = _copy_run(finished, tmp_path)
    real = run_mod._finish_commit

    def die_half_way(out):
        results = out / ".partial" / "results"
        names = json.loads((results / "commit.json").read_text())["files"]
        os.replace(results / names[0], out / names[0])  # one file moved, then the process "dies"
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(run_mod, "_finish_commit", lambda out: (results := out / ".partial" / "results" / "commit.json").is_file() and die_half_way(out))
        assert invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run, "--quantile", "0.2"]).code == 130
    assert run_mod._finish_commit is real
    done = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run, "--quantile", "0.2"])
    assert done.code == 0, done.stderr
    assert json.loads((run / "run.json").read_text())["recomputed"] == []  # the journal put the results in place
    clean = tmp_path / "clean"
    assert invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", clean, "--quantile", "0.2"]).code == 0
    for name in ("tally_conv.csv", "topk_conv.csv", "thresholds_conv.npy"):
        assert (run / name).read_bytes() == (clean / name).read_bytes(), name
    assert not (run / ".partial").exists()


# -- section 6: one line for every bad value -------------------------------------------------------


@pytest.mark.parametrize(
    "option,value",
    [
        ("--iou-threshold", "nan"), ("--iou-threshold", "-5"), ("--iou-threshold", "1.5"),
        ("--quantile", "0"), ("--quantile", "1"), ("--quantile", "nan"),
        ("--cache-gb", "-1"), ("--cache-gb", "nan"), ("--cache-gb", "inf"),
        ("--batch-size", "0"), ("--top-k", "0"), ("--limit", "0"), ("--limit", "-3"),
        ("--normalize", "1,2,nan/1,1,1"), ("--normalize", "1,2,3/0,1,1"), ("--normalize", "1,2,3/nan,1,1"),
        ("--normalize", "a,b,c/1,1,1"), ("--normalize", "1,2,3/1,1,1e400"),
        ("--split", "my split"), ("--split", "a/b"),
    ],
)
def test_nonsense_values_are_one_line(toy, tmp_path, option, value):
    out = invoke(["dissect", toy, *BASE, "--layer", "pool", option, value, "-o", tmp_path / "o"])
    assert_one_error(out, option, code=2)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "content,needle",
    [
        (np.array(["a", "b", "c", "d"]), "not numbers"),
        (np.full(4, np.nan, np.float32), "NaN"),
        (np.zeros(3, np.float32), "3 thresholds but layer pool has 4 units"),
        (b"not a npy file", "cannot read thresholds"),
    ],
)
def test_bad_thresholds_files(toy, tmp_path, content, needle):
    path = tmp_path / "t.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    out = invoke(["dissect", toy, *BASE, "--layer", "pool", "--thresholds", path, "-o", tmp_path / "o"])
    assert_one_error(out, "t.npy", needle)


@pytest.mark.parametrize("body,needle", [
    ("def build(num_classes=3):\n    raise RuntimeError('the GPU driver is on holiday')\n", "RuntimeError: the GPU driver is on holiday"),
    ("raise ValueError('broken at import')\ndef build():\n    pass\n", "ValueError: broken at import"),
    ("build = 42\n", "not a function"),
])
def test_model_factory_that_fails_is_one_line(toy, tmp_path, body, needle):
    module = f"failing_factory_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{module}.py").write_text(body)
    out = invoke(["dissect", toy, "--model", f"{module}:build", "--layer", "conv", "--workers", "0", "-o", tmp_path / "o"], cwd=tmp_path)
    assert_one_error(out, f"{module}:build", needle)
    assert not (tmp_path / "o").exists()


def test_dataset_without_usable_category_fails_before_the_forward_pass(toy, tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    shutil.copytree(toy, ds)
    for table in ds.glob("c_*.csv"):
        table.write_text("code,number,name,frequency,coverage\n")
    forward = []
    monkeypatch.setattr(FeatureStore, "_forward", lambda *a, **k: forward.append(1))
    out = invoke(["dissect", ds, *BASE, "--layer", "pool", "-o", tmp_path / "o"])
    assert_one_error(out, str(ds), "no label")
    assert not forward


def test_empty_category_csv_fails_before_the_forward_pass(toy, tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    shutil.copytree(toy, ds)
    (ds / "category.csv").write_text("name,first,last,count,frequency\n")
    forward = []
    monkeypatch.setattr(FeatureStore, "_forward", lambda *a, **k: forward.append(1))
    out = invoke(["dissect", ds, *BASE, "--layer", "pool", "-o", tmp_path / "o"])
    assert_one_error(out, "category.csv")
    assert not forward


def test_deeply_nested_run_json(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    (run / "run.json").write_text('{"layers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_one_error(invoke(["report", run, "-o", tmp_path / "rep", "--no-images"]), "run.json", "nested")
    # dissect itself recomputes what an unreadable record held, rather than failing.


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda r: r.update(layers=[1, 2]), "layers"),
        (lambda r: r["layers"].update(conv=5), "layers.conv"),
        (lambda r: r["layers"]["conv"].update(params=[]), "layers.conv.params"),
        (lambda r: r["layers"]["conv"]["params"].update(iou_threshold="high"), "iou_threshold"),
        (lambda r: r["layers"]["conv"]["params"].update(iou_threshold=float("nan")), "iou_threshold"),
        (lambda r: r["layers"]["conv"]["params"].update(categories=7), "categories"),
        (lambda r: r["layers"]["conv"]["params"].update(categories=[None]), "categories"),
        (lambda r: r["layers"]["conv"].update(files={"tally": 5}), "files.tally"),
        (lambda r: r["layers"]["conv"].update(files="tally.csv"), "files"),
        (lambda r: r.update(args="x"), "args"),
        (lambda r: r["args"].update(layers={"a": 1}), "args.layers"),
        (lambda r: r["args"].update(pretrained="yes"), "args.pretrained"),
        (lambda r: r.update(images=[1]), "images"),
        (lambda r: r["args"].update(dataset="/tmp/a\0b"), "args.dataset"),
    ],
)
def test_wrongly_typed_run_json(finished, tmp_path, change, needle):
    run = _copy_run(finished, tmp_path)
    _edit_record(run, change)
    out = invoke(["report", run, "-o", tmp_path / "rep", "--no-images"])
    assert_one_error(out, "run.json", needle)
    assert not (tmp_path / "rep").exists()


def test_dissect_survives_a_garbled_run_folder(finished, toy, tmp_path):
    run = _copy_run(finished, tmp_path)
    _edit_record(run, lambda r: r["layers"].update(conv={"params": "x", "files": {"tally": "/etc/passwd"}}))
    (run / "summary.json").write_text('{"conv": 3}')
    done = invoke(["dissect", toy, *BASE, "--layer", "conv", "-o", run])
    assert done.code == 0, done.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["recomputed"] == ["conv"] and record["layers"]["conv"]["files"]["tally"] == "tally_conv.csv"


def _fail_writes(monkeypatch, code: int, under: Path) -> None:
    original = Path.write_bytes

    def write_bytes(self, data):
        if str(self).startswith(str(under)):
            raise OSError(code, os.strerror(code), str(self))
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_dissect_on_a_full_or_read_only_disk(toy, tmp_path, monkeypatch, code):
    out = tmp_path / "o"
    _fail_writes(monkeypatch, code, tmp_path)
    line = assert_one_error(invoke(["dissect", toy, *BASE, "--layer", "pool", "-o", out]), str(out), os.strerror(code))
    assert ".partial" not in line and ".tmp" not in line
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_report_on_a_full_or_read_only_disk(finished, tmp_path, monkeypatch, code):
    rep = tmp_path / "rep"
    _fail_writes(monkeypatch, code, tmp_path)
    line = assert_one_error(invoke(["report", finished, "-o", rep, "--no-images"]), str(rep), os.strerror(code))
    assert ".partial" not in line
    assert not rep.exists()
    assert_no_leftovers(tmp_path)


def test_report_error_names_the_users_folder_not_the_staging_one(finished, tmp_path, monkeypatch):
    from concepts.errors import DatasetFormatError

    def fail(path, data):
        raise DatasetFormatError("cannot be written", path=path)

    rep = tmp_path / "rep"
    monkeypatch.setattr("concepts.dissect.report.atomic_write", fail)
    line = assert_one_error(invoke(["report", finished, "-o", rep, "--no-images"]), str(rep / "tables"))
    assert ".partial-" not in line
    monkeypatch.setattr("concepts.dissect.report.atomic_write", lambda path, data: open(path.parent / "missing" / "x", "wb"))
    line = assert_one_error(invoke(["report", finished, "-o", rep, "--no-images"]), str(rep))
    assert ".partial-" not in line
    assert not rep.exists()
    assert_no_leftovers(tmp_path)


def test_topk_naming_a_unit_the_layer_lacks(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    lines = (run / "topk_conv.csv").read_text().splitlines()
    (run / "topk_conv.csv").write_text("\n".join([lines[0], "99" + lines[1][lines[1].index(","):]]) + "\n")
    out = invoke(["report", run, "-o", tmp_path / "rep", "--trust-model-code"])
    assert_one_error(out, "topk_conv.csv", "unit 99")
    assert not (tmp_path / "rep").exists()


def test_only_path_arguments_become_absolute(toy, tmp_path):
    (tmp_path / "ndlite").write_text("a file that happens to share the union's name")
    (tmp_path / "none").mkdir()
    done = invoke(["dissect", toy, *BASE, "--layer", "pool", "-o", "out", "--union", "ndlite"], cwd=tmp_path)
    assert done.code == 0, done.stderr
    args = json.loads((tmp_path / "out" / "run.json").read_text())["args"]
    assert args["union"] == "ndlite" and args["normalize"] == "none"
    assert args["out"] == str(tmp_path / "out") and args["dataset"] == str(toy)


# -- agreement ------------------------------------------------------------------------------------


def test_agreement_counts_and_names_unreadable_items(tmp_path):
    from folder_source import solid, write_folder_source

    labels = {("object", 1): ["dog"]}
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 1
    images = {"one.jpg": solid(8, 8, (90, 90, 90)), "two.jpg": solid(8, 8, (90, 90, 90))}
    a = write_folder_source(tmp_path / "a", images, {"object": {"one.jpg": mask, "two.jpg": mask}}, labels)
    b = write_folder_source(tmp_path / "b", images, {"object": {"one.jpg": mask, "two.jpg": mask}}, labels)
    (b / "masks" / "object" / "two.png").write_bytes(b"not a png")
    out = invoke(["agreement", a, b])
    assert out.code == 0, out.stderr
    assert "unreadable in B, left out: " in out.stdout and str(b / "masks" / "object" / "two.png") in out.stdout
    assert "1 unreadable item(s) in A and" not in out.stdout and "0 unreadable item(s) in A and 1 in B" in out.stdout
    data = json.loads(invoke(["agreement", a, b, "--json"]).stdout)
    assert [u["where"] for u in data["unreadable_in_b"]] == [str(b / "masks" / "object" / "two.png")]
    # When nothing readable is shared, the error says why instead of "share no image".
    (b / "masks" / "object" / "one.png").write_bytes(b"not a png either")
    line = assert_one_error(invoke(["agreement", a, b]), "share no readable image", "2 unreadable", "one.png")
    assert "0: " not in line


def test_agreement_names_archive_members_not_temporary_folders(tmp_path):
    from folder_source import solid, write_folder_source

    labels = {("object", 1): ["dog"]}
    mask = np.zeros((8, 8), np.uint8)
    a = write_folder_source(tmp_path / "a", {"one.jpg": solid(8, 8, (1, 2, 3))}, {"object": {"one.jpg": mask}}, labels)
    b = write_folder_source(tmp_path / "b", {"one.jpg": solid(8, 8, (1, 2, 3))}, {"object": {"one.jpg": mask}}, labels)
    (b / "masks" / "object" / "one.png").write_bytes(b"broken")
    archive = shutil.make_archive(str(tmp_path / "b-export"), "zip", b)
    line = assert_one_error(invoke(["agreement", a, archive, "--format", "folder"]), "b-export.zip/masks/object/one.png")
    assert "concepts-agree-" not in line
