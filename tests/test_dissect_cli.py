"""``concepts dissect`` through the CLI: one-line errors, resume without recomputing, --thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from concepts.cli import app
from synth import red_unit_net, toy_dataset

BASE = ["--model", "synth:red_unit_net", "--normalize", "none", "--quantile", "0.1", "--workers", "0"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n=8)


# Models named `module:factory` (synth:red_unit_net, ...) resolve from the tests folder.
pytestmark = pytest.mark.usefixtures("in_tests_dir")


def invoke(*args):
    result = CliRunner().invoke(app, ["dissect", *map(str, args)])
    return result, result.output


def one_error_line(result, text):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert text in lines[0], lines[0]
    return lines[0]


def test_unreadable_dataset(tmp_path):
    result, _ = invoke(tmp_path / "nope", *BASE, "--layer", "pool", "-o", tmp_path / "out")
    one_error_line(result, "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "category.csv").write_text("wrong,header\n")
    result, _ = invoke(tmp_path / "bad", *BASE, "--layer", "pool", "-o", tmp_path / "out")
    one_error_line(result, "category.csv")


def test_unknown_layer_lists_available(toy, tmp_path):
    result, _ = invoke(toy, *BASE, "--layer", "pol", "-o", tmp_path / "out")
    line = one_error_line(result, "no layer 'pol'")
    assert "did you mean pool" in line and "conv" in line and "head" in line


@pytest.mark.parametrize("layer,text", [("gap", "spatial size above 1x1"), ("head", "N x units x h x w")])
def test_layer_without_spatial_maps(toy, tmp_path, layer, text):
    result, _ = invoke(toy, *BASE, "--layer", layer, "-o", tmp_path / "out")
    one_error_line(result, text)


def test_checkpoint_that_does_not_fit(toy, tmp_path):
    state = torch.nn.Conv2d(3, 8, 1).state_dict()
    torch.save(state, tmp_path / "other.pt")
    result, _ = invoke(toy, *BASE, "--weights", tmp_path / "other.pt", "--layer", "pool", "-o", tmp_path / "out")
    one_error_line(result, "does not fit")


def test_bad_options(toy, tmp_path):
    result, _ = invoke(toy, *BASE, "--layer", "pool", "--union", "weird", "-o", tmp_path / "out")
    one_error_line(result, "--union")
    result, _ = invoke(toy, *BASE, "--layer", "pool", "--categories", "colour", "-o", tmp_path / "out")
    one_error_line(result, "colour")
    np.save(tmp_path / "t.npy", np.zeros(3, np.float32))
    result, _ = invoke(toy, *BASE, "--layer", "pool", "--thresholds", tmp_path / "t.npy", "-o", tmp_path / "out")
    one_error_line(result, "3 thresholds but layer pool has 4 units")
    result, _ = invoke(toy, *BASE, "--layer", "pool", "--device", "gpu", "-o", tmp_path / "out")
    one_error_line(result, "--device 'gpu'")
    odd = tmp_path / "q=0.1"
    odd.mkdir()
    np.save(odd / "t.npy", np.zeros(3, np.float32))  # a file for every layer, though its path holds '='
    result, _ = invoke(toy, *BASE, "--layer", "pool", "--thresholds", odd / "t.npy", "-o", tmp_path / "out")
    one_error_line(result, "3 thresholds but layer pool has 4 units")


def test_resume_does_not_recompute(toy, tmp_path):
    out = tmp_path / "out"
    result, _ = invoke(toy, *BASE, "--layer", "pool", "-o", out)
    assert result.exit_code == 0, result.output
    first = json.loads((out / "run.json").read_text())
    assert first["recomputed"] == ["pool"]
    tally = (out / "tally_pool.csv").stat().st_mtime_ns
    result, _ = invoke(toy, *BASE, "--layer", "pool", "-o", out)
    assert result.exit_code == 0
    assert json.loads((out / "run.json").read_text())["recomputed"] == []
    assert (out / "tally_pool.csv").stat().st_mtime_ns == tally
    # A new layer is computed alone; the finished one is kept.
    result, _ = invoke(toy, *BASE, "--layer", "pool", "--layer", "conv", "-o", out)
    assert json.loads((out / "run.json").read_text())["recomputed"] == ["conv"]
    assert set(json.loads((out / "summary.json").read_text())) == {"pool", "conv"}
    # Changed arguments recompute and say why.
    result, _ = invoke(toy, *[a if a != "0.1" else "0.2" for a in BASE], "--layer", "pool", "-o", out)
    assert json.loads((out / "run.json").read_text())["recomputed"] == ["pool"]
    assert (out / "tally_pool.csv").stat().st_mtime_ns != tally


def test_resume_logs_reason(toy, tmp_path, caplog):
    from concepts.dissect.run import DissectConfig, dissect

    cfg = DissectConfig(dataset=toy, layers=["pool"], out=tmp_path / "o", model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0)
    dissect(cfg)
    cfg.union = "global"
    with caplog.at_level("INFO", logger="concepts.dissect"):
        dissect(cfg)
    assert "union 'ndlite' -> 'global'" in caplog.text


def test_given_thresholds_are_used(toy, tmp_path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert invoke(toy, *BASE, "--layer", "pool", "-o", out1)[0].exit_code == 0
    t = np.load(out1 / "thresholds_pool.npy")
    np.save(tmp_path / "t.npy", t)
    result, _ = invoke(toy, *BASE[:-4], "--workers", "0", "--layer", "pool", "--thresholds", f"pool={tmp_path / 't.npy'}", "-o", out2)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out2 / "thresholds_pool.npy"), t)
    assert (out1 / "tally_pool.csv").read_text() == (out2 / "tally_pool.csv").read_text()


def test_model_factory_output_is_deterministic(toy, tmp_path):
    for name in ("x", "y"):
        assert invoke(toy, *BASE, "--layer", "conv", "--batch-size", "3" if name == "x" else "8", "-o", tmp_path / name)[0].exit_code == 0
    assert (tmp_path / "x" / "tally_conv.csv").read_bytes() == (tmp_path / "y" / "tally_conv.csv").read_bytes()
    assert red_unit_net().conv.weight.shape == (4, 3, 1, 1)


def test_published_dataset_gives_identical_tally(toy, tmp_path, monkeypatch):
    from concepts.publish import PublishOptions, parse_shard_size, publish

    hf = tmp_path / "toy-hf"
    publish(toy, hf, PublishOptions(shard_size=parse_shard_size("2kB")))
    assert len(list((hf / "data").glob("*.parquet"))) > 1
    runs = {"broden": toy, "published": hf, "hub": "hf://me/toy"}
    monkeypatch.setattr("concepts.hub.download", lambda spec, **kw: hf)  # hf:// without a network
    for name, spec in runs.items():
        result, _ = invoke(spec, *BASE[:-2], "--workers", "1" if name == "published" else "0", "--layer", "conv", "-o", tmp_path / name)
        assert result.exit_code == 0, result.output
    for name in ("published", "hub"):
        for f in ("tally_conv.csv", "topk_conv.csv", "thresholds_conv.npy"):
            assert (tmp_path / name / f).read_bytes() == (tmp_path / "broden" / f).read_bytes(), (name, f)
    assert json.loads((tmp_path / "hub" / "run.json").read_text())["args"]["dataset"] == "hf://me/toy"


def _copy(toy, tmp_path):
    import shutil

    shutil.copytree(toy, tmp_path / "ds")
    return tmp_path / "ds"


def test_dataset_errors_name_the_file(toy, tmp_path):
    ds = _copy(toy, tmp_path)
    first = next(p for p in sorted((ds / "images" / "synth").iterdir()) if p.name.endswith("_object.png"))
    first.unlink()
    one_error_line(invoke(ds, *BASE, "--layer", "pool", "-o", tmp_path / "o")[0], f"images/synth/{first.name} is missing")
    (ds / "c_object.csv").unlink()
    one_error_line(invoke(ds, *BASE, "--layer", "pool", "-o", tmp_path / "o")[0], "c_object.csv: file is missing")
    (ds / "index.csv").write_text((ds / "index.csv").read_text().replace(",scene", ",scenery", 1))
    (ds / "c_object.csv").write_text("code,number,name,frequency,coverage\n")
    one_error_line(invoke(ds, *BASE, "--layer", "pool", "-o", tmp_path / "o")[0], "index.csv: no column for category scene")
    (ds / "index.csv").unlink()
    one_error_line(invoke(ds, *BASE, "--layer", "pool", "-o", tmp_path / "o")[0], "index.csv: file is missing")


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_one_line_even_from_a_worker(toy, tmp_path, workers):
    ds = _copy(toy, tmp_path)
    bad = sorted((ds / "images" / "synth").glob("*.jpg"))[3]
    bad.write_bytes(b"not a jpeg")
    line = one_error_line(invoke(ds, *BASE[:-2], "--workers", workers, "--layer", "pool", "-o", tmp_path / "o")[0], bad.name)
    assert "decode" in line or "cannot read" in line


def test_label_number_outside_label_csv(toy, tmp_path):
    from PIL import Image

    ds = _copy(toy, tmp_path)
    png = sorted((ds / "images" / "synth").glob("*_color.png"))[0]
    arr = np.array(Image.open(png))
    arr[0, 0] = (99, 0, 0)
    Image.fromarray(arr).save(png)
    one_error_line(invoke(ds, *BASE, "--layer", "pool", "-o", tmp_path / "o")[0], "label number 99 is not in label.csv")


def test_pretrained_offline_and_missing_cuda(toy, tmp_path, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    line = one_error_line(invoke(toy, "--model", "resnet18", "--pretrained", "--layer", "layer4", "-o", tmp_path / "o")[0], "published weights of resnet18")
    assert "--weights" in line
    if not torch.cuda.is_available():
        one_error_line(invoke(toy, *BASE, "--layer", "pool", "--device", "cuda", "-o", tmp_path / "o")[0], "no CUDA device")
