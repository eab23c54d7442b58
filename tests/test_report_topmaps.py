"""The top-k maps the forward pass stores, and the report drawn from them without the model."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from concepts.broden.reader import ConceptDataset
from concepts.cli import app
from concepts.dissect.report import tile_masks
from concepts.dissect.topmaps import load_topmaps, masks, upsample
from synth import red_unit_net, toy_dataset

import concepts.cli.report  # noqa: F401  (registers `report`)


@pytest.mark.parametrize("shape,size", [((3, 7, 7), (112, 112)), ((2, 5, 9), (16, 31)), ((2, 14, 14), (7, 7))])
def test_upsample_is_torch_bilinear_with_pixel_centres_aligned(shape, size):
    """Against torch's own F.interpolate (align_corners=False), the tally's rule, up and down."""
    maps = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    want = F.interpolate(torch.from_numpy(maps)[:, None].double(), size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(upsample(maps, size), want, rtol=0, atol=1e-12)
    t = np.array([0.1, -0.2, 0.3][: shape[0]])
    assert (masks(maps, t, size) == (want > t[:, None, None])).all()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from concepts.dissect.run import DissectConfig, dissect

    root = tmp_path_factory.mktemp("maps")
    ds = toy_dataset(root / "ds", n=8)
    dissect(DissectConfig(dataset=ds, layers=["conv", "pool"], out=root / "run", model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, top_k=3, batch_size=3))
    return root / "run", ds


def _features(ds_root, layer):
    """The planted model's features of every image, computed here with torch from the decoded images."""
    net = red_unit_net().eval()
    ds = ConceptDataset(ds_root)
    x = torch.from_numpy(np.stack([ds.load_image(s) for s in ds])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        f = net.conv(x)
        return (f if layer == "conv" else net.pool(f)).numpy(), ds


@pytest.mark.parametrize("layer", ["conv", "pool"])
def test_stored_maps_are_the_top_k_images_features_in_csv_order(run, layer):
    out, ds_root = run
    tm = load_topmaps(out / f"topmaps_{layer}.npz")
    feats, ds = _features(ds_root, layer)
    topk = pd.read_csv(out / f"topk_{layer}.csv")
    assert tm.maps.shape == (4, 3, *feats.shape[2:])
    for row in topk.itertuples():
        u, r, i = row.unit - 1, row.rank - 1, row.image_index
        assert tm.image_index[u, r] == i and ds[i].image == row.image
        np.testing.assert_allclose(tm.maps[u, r].astype(np.float32), feats[i, u], rtol=2e-3, atol=1e-2)
        assert tm.max_activation[u, r] == pytest.approx(row.max_activation, rel=1e-6)
    # The run's own thresholds, in float64 (whatever precision the .npy keeps).
    assert tm.thresholds.dtype == np.float64
    saved = np.load(out / f"thresholds_{layer}.npy")
    np.testing.assert_array_equal(tm.thresholds.astype(saved.dtype), saved)
    # The masks the report draws are the tally's: torch's upsampling of the model's maps, > threshold.
    s = ds[0]
    for u in range(4):
        ids = tm.image_index[u]
        got = tile_masks(tm.maps[u], np.repeat(tm.thresholds[u], 3), (s.sh, s.sw), (s.sh, s.sw))
        want = F.interpolate(torch.from_numpy(feats[ids, u])[:, None], size=(s.sh, s.sw), mode="bilinear", align_corners=False)[:, 0].numpy() > tm.thresholds[u]
        assert (got != want).mean() <= 0.01  # float16 storage may move a pixel lying within 2**-11 of the threshold


def test_interrupted_run_resumes_with_the_same_maps(run, tmp_path, monkeypatch):
    from concepts.dissect.run import DissectConfig, dissect
    from concepts.dissect.tally import Tally

    _, ds = run
    cfg = dict(dataset=ds, layers=["pool"], model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, top_k=3, batch_size=3, checkpoint_s=0)
    dissect(DissectConfig(out=tmp_path / "whole", **cfg))
    original = Tally.update
    calls = {"n": 0}

    def stop(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(Tally, "update", stop)
    with pytest.raises(KeyboardInterrupt):
        dissect(DissectConfig(out=tmp_path / "resumed", **cfg))
    monkeypatch.setattr(Tally, "update", original)
    dissect(DissectConfig(out=tmp_path / "resumed", **cfg))  # thresholds and top-k maps come from the checkpoint
    a, b = load_topmaps(tmp_path / "whole" / "topmaps_pool.npz"), load_topmaps(tmp_path / "resumed" / "topmaps_pool.npz")
    for k in ("maps", "image_index", "max_activation", "thresholds"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_report_renders_fully_after_model_code_and_weights_are_deleted(tmp_path, monkeypatch):
    """A factory module and a weights file the run used are gone: the report needs neither, nor any consent."""
    from concepts.dissect.run import DissectConfig, dissect

    ds = toy_dataset(tmp_path / "ds", n=6)
    (tmp_path / "gone_model_mod.py").write_text("def build(num_classes=3):\n    from synth import red_unit_net\n    return red_unit_net(num_classes)\n")
    weights = tmp_path / "net.pth"
    torch.save(red_unit_net().state_dict(), weights)
    monkeypatch.syspath_prepend(str(tmp_path))
    dissect(DissectConfig(dataset=ds, layers=["conv"], out=tmp_path / "run", model="gone_model_mod:build", weights=weights, normalize="none", quantile=0.1, workers=0, top_k=2))
    (tmp_path / "gone_model_mod.py").unlink()
    weights.unlink()
    monkeypatch.delitem(sys.modules, "gone_model_mod")

    def refuse(*a, **k):
        raise AssertionError("the report built a model")

    monkeypatch.setattr("concepts.dissect.models.load_model", refuse)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "-o", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "gone_model_mod" not in sys.modules
    page = (tmp_path / "rep" / "conv.html").read_text()
    assert page.count('<article class="unit') == 4 and page.count('class="strip"') >= 4
    assert page.count('class="tile"') >= 4 * 2
    assert "no stored top-k maps" not in page


def test_old_run_without_maps_says_so_and_recomputes_on_request(run, tmp_path):
    out, _ = run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for layer in ("conv", "pool"):
        (old / f"topmaps_{layer}.npz").unlink()
    done = CliRunner().invoke(app, ["report", str(old), "-o", str(tmp_path / "a")])
    assert done.exit_code == 0, done.output
    page = (tmp_path / "a" / "conv.html").read_text()
    notes = [line for line in page.splitlines() if "no stored top-k maps for layer(s) conv, pool" in line]
    assert len(notes) == 1 and "--recompute" in notes[0]
    assert 'class="tile"' not in page
    # --recompute is the old path: the model (a factory here) needs the command line's consent.
    refused = CliRunner().invoke(app, ["report", str(old), "-o", str(tmp_path / "b"), "--recompute"])
    assert refused.exit_code != 0 and "--trust-model-code" in refused.output
    done = CliRunner().invoke(app, ["report", str(old), "-o", str(tmp_path / "c"), "--recompute", "--trust-model-code"])
    assert done.exit_code == 0, done.output
    recomputed = (tmp_path / "c" / "conv.html").read_text()
    assert "no stored top-k maps" not in recomputed and recomputed.count('class="tile"') >= 4 * 3
    # The same tiles and masks as the report drawn from the stored maps.
    stored = CliRunner().invoke(app, ["report", str(out), "-o", str(tmp_path / "d")])
    assert stored.exit_code == 0, stored.output
    strips = lambda text: [line for line in text.splitlines() if 'class="strip"' in line]  # noqa: E731
    assert strips(recomputed) == strips((tmp_path / "d" / "conv.html").read_text())


def test_topk_list_and_maps_of_different_runs_are_refused(run, tmp_path):
    out, _ = run
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    topk = pd.read_csv(mixed / "topk_conv.csv")
    topk.loc[0, "image_index"] = int(topk["image_index"].max()) + 1 if topk.loc[0, "image_index"] == 0 else 0
    topk.to_csv(mixed / "topk_conv.csv", index=False)
    done = CliRunner().invoke(app, ["report", str(mixed), "-o", str(tmp_path / "rep")])
    assert done.exit_code != 0 and "Traceback" not in done.output
    (line,) = [line for line in done.output.splitlines() if line.startswith("error:")]
    assert "topmaps_conv.npz" in line and "is not the one the top-k maps hold" in line
    assert not (tmp_path / "rep").exists()
    record = json.loads((mixed / "run.json").read_text())
    assert record["layers"]["conv"]["files"]["topmaps"] == "topmaps_conv.npz"
