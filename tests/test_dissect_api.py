"""The Python API: ``dissect(model_object, dataset, ...)`` end to end, its result object, and the CLI's equality with it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from concepts.cli import app
from concepts.dissect import DissectConfig, DissectResult, dissect
from concepts.errors import UsageError
from synth import red_unit_net, toy_dataset

OPTIONS = dict(quantile=0.1, workers=0, batch_size=5)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n=8)


# Models named `module:factory` (synth:red_unit_net, ...) resolve from the tests folder.
pytestmark = pytest.mark.usefixtures("in_tests_dir")


@pytest.fixture(scope="module")
def api_run(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    net = red_unit_net()
    net.train()
    result = dissect(net, toy, layers=["pool", "conv"], out=out, normalize="none", **OPTIONS)
    return net, result, out


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_result_tables_equal_the_files(api_run):
    net, result, out = api_run
    assert isinstance(result, DissectResult) and result.path == out
    assert net.training  # the caller's object leaves in the mode it came in
    for layer in ("pool", "conv"):
        rows = _csv_rows(out / f"tally_{layer}.csv")
        tally = result.tally(layer)
        assert list(tally.columns) == list(rows[0])
        assert [int(u) for u in tally["unit"]] == [int(r["unit"]) for r in rows]
        assert list(tally["label"]) == [r["label"] for r in rows]
        np.testing.assert_allclose(tally["score"].astype(float), [float(r["score"]) for r in rows])
        iou = result.iou(layer)
        matrices = np.load(out / f"matrices_{layer}.npz")
        np.testing.assert_array_equal(iou.to_numpy(), matrices["iou"])
        assert list(iou.columns) == [str(n) for n in matrices["label_names"]]
        assert list(iou.index) == [1, 2, 3, 4] and iou.index.name == "unit"
        # The index is the CSV's 1-based unit number: each row's score is the IoU of its unit and label.
        for r in rows:
            assert abs(iou.loc[int(r["unit"]), r["label"]] - float(r["score"])) < 1e-6
    red = result.tally("pool").set_index("unit").loc[3]  # channel 2 fires on red pixels
    assert red["color-label"] == "red-c" and float(red["color-iou"]) > 0.5
    summary = json.loads((out / "summary.json").read_text())
    table = result.summary()
    assert list(table.columns) == ["layer", "category", "units", "detectors", "unique_concepts"]
    for row in table.itertuples():
        s = summary[row.layer]
        assert row.units == s["units"]
        assert (row.detectors, row.unique_concepts) == (s["categories"][row.category]["detectors"], s["categories"][row.category]["unique_concepts"])
    assert len(table) == 2 * 3


def test_result_prints_short_and_reads_as_record(api_run):
    net, result, out = api_run
    text = repr(result)
    assert str(result) == text and len(text) < 300 and "\n" not in text
    assert "pool: 4 units" in text and "RedNet" in text and "versions" not in text
    assert result["summary"]["pool"]["units"] == 4 and "timings" in result  # the run.json record, as a mapping
    assert result.layers == ["pool", "conv"]


def test_model_object_recorded_by_name_and_content_hash(api_run, toy):
    net, result, out = api_run
    rec = json.loads((out / "run.json").read_text())
    from concepts.dissect.models import state_hash

    assert rec["layers"]["pool"]["params"]["weights"] == state_hash(net) == rec["model"]["weights_hash"]
    assert rec["args"]["model"] == rec["model"]["name"] == f"memory:synth.red_unit_net.<locals>.RedNet@{state_hash(net)}"
    assert rec["model"]["class"] == "synth.red_unit_net.<locals>.RedNet"
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".pkl")]
    # The same weights resume; changed weights recompute.
    again = dissect(net, toy, layers=["pool", "conv"], out=out, normalize="none", **OPTIONS)
    assert again["recomputed"] == []
    other = red_unit_net()
    with torch.no_grad():
        other.conv.bias.add_(1.0)
    changed = dissect(other, toy, layers=["pool"], out=out, normalize="none", **OPTIONS)
    assert changed["recomputed"] == ["pool"]
    dissect(net, toy, layers=["pool", "conv"], out=out, normalize="none", **OPTIONS)  # back as the module's other tests expect


def test_api_equals_cli(api_run, toy, tmp_path):
    _, _, out = api_run
    cli_out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["dissect", str(toy), "--model", "synth:red_unit_net", "--normalize", "none", "--quantile", "0.1", "--workers", "0", "--batch-size", "5", "--layer", "pool", "--layer", "conv", "-o", str(cli_out)])
    assert result.exit_code == 0, result.output
    for layer in ("pool", "conv"):
        assert (cli_out / f"tally_{layer}.csv").read_bytes() == (out / f"tally_{layer}.csv").read_bytes()
        a, b = np.load(cli_out / f"matrices_{layer}.npz"), np.load(out / f"matrices_{layer}.npz")
        for key in ("iou", "intersection", "activation", "truth"):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(np.load(cli_out / f"thresholds_{layer}.npy"), np.load(out / f"thresholds_{layer}.npy"))
    assert json.loads((cli_out / "summary.json").read_text()) == json.loads((out / "summary.json").read_text())


def test_config_and_model_string_still_work(toy, tmp_path):
    record = dissect(DissectConfig(dataset=toy, layers=["pool"], out=tmp_path / "cfg", model="synth:red_unit_net", normalize="none", **OPTIONS))
    assert record["summary"]["pool"]["units"] == 4
    by_name = dissect("synth:red_unit_net", toy, layers="pool", out=tmp_path / "name", normalize="none", **OPTIONS)
    assert by_name.tally("pool").equals(record.tally("pool"))


def test_preprocess_argument_is_recorded(toy, tmp_path):
    from torchvision.transforms._presets import ImageClassification

    preset = ImageClassification(crop_size=32, resize_size=40, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    result = dissect(red_unit_net(), toy, layers="pool", out=tmp_path / "t", preprocess=preset, **OPTIONS)
    pre = result["preprocessing"]
    assert np.allclose(pre["mean"], preset.mean) and np.allclose(pre["std"], preset.std)
    assert pre["mean_std_from"] == "preprocess= ImageClassification" and pre["crop"] is None and pre["resize"] is None
    pair = dissect(red_unit_net(), toy, layers="pool", out=tmp_path / "p", preprocess=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), **OPTIONS)
    assert pair["preprocessing"]["mean"] == [0.5] * 3 and pair["layers"]["pool"]["params"]["normalize"] == "0.5,0.5,0.5/0.25,0.25,0.25"
    # With nothing stated, auto means ImageNet's, recorded as the named normalisation (so older runs resume).
    plain = dissect(red_unit_net(), toy, layers="pool", out=tmp_path / "i", **OPTIONS)
    assert plain["layers"]["pool"]["params"]["normalize"] == "imagenet" and plain["preprocessing"]["mean_std_from"].startswith("imagenet")


def test_api_usage_errors(toy, tmp_path):
    with pytest.raises(UsageError, match="no option 'quantiles'.*quantile"):
        dissect(red_unit_net(), toy, layers="pool", out=tmp_path / "o", quantiles=0.1)
    with pytest.raises(UsageError, match="needs out"):
        dissect(red_unit_net(), toy, layers="pool")
    with pytest.raises(UsageError, match="preprocess= or normalize="):
        dissect(red_unit_net(), toy, layers="pool", out=tmp_path / "o", preprocess=((0, 0, 0), (1, 1, 1)), normalize="imagenet", **OPTIONS)
    with pytest.raises(UsageError, match="preprocess= takes"):
        dissect(red_unit_net(), toy, layers="pool", out=tmp_path / "o", preprocess="fast", **OPTIONS)
    assert not (tmp_path / "o").exists()


def test_report_from_result_draws_the_in_memory_model(api_run, tmp_path):
    _, result, _ = api_run
    index = result.report(tmp_path / "report")
    assert index.is_file() and (tmp_path / "report" / "pool.html").is_file()
    assert list((tmp_path / "report").glob("pool_units/*")) or "data:image/png" in (tmp_path / "report" / "pool.html").read_text()
