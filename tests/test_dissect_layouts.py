"""Layer layouts: NCHW, channels-last, token sequences, tuple/dict outputs; planted units found end to end.

The planted models below (factories for ``concepts dissect --model test_dissect_layouts:NAME``) compute
one map per 8 x 8 pixel cell: +1 where the cell is red, -1 elsewhere, as unit ``RED`` of ``UNITS``;
every other unit is -1 everywhere. With thresholds 0 (``--thresholds``), the red unit's mask is the red
square and no other unit fires, so the expected tally is known by construction. Each model emits the
same maps in another layout; reading a layout wrongly moves, mixes or miscounts the units.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from concepts.cli import app
from concepts.dissect.layouts import Known, Layout, parse_layout, pick_output, to_units
from concepts.errors import ModelError, UsageError
from synth import SynthRow, write_broden

CELL, UNITS, RED, PREFIX = 8, 5, 2, 2


class _Cells(nn.Module):
    """``N x UNITS x gh x gw``: unit RED is +1 on red cells, -1 elsewhere; the others -1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = nn.functional.avg_pool2d(x[:, :1], CELL)
        red = ((r - 110) / 110).clamp(-1, 1)
        out = torch.full((x.shape[0], UNITS, *red.shape[2:]), -1.0)
        out[:, RED] = red[:, 0]
        return out


class _Emit(nn.Module):
    """Rearranges the maps into ``layout``: a module whose layout the model cannot state."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout

    def forward(self, m: torch.Tensor):
        if self.layout == "nhwc":
            return m.permute(0, 2, 3, 1).contiguous()
        if self.layout == "tokens":
            seq = m.flatten(2).transpose(1, 2)  # N x (gh*gw) x C, row-major patches
            prefix = torch.full((m.shape[0], PREFIX, UNITS), 9.0)  # loud prefix tokens, to be dropped
            return torch.cat([prefix, seq], 1)
        if self.layout == "tuple":
            return (m, torch.zeros(1))
        if self.layout == "dict":
            return {"attn": torch.zeros(1), "maps": m}
        return m


class _Planted(nn.Module):
    def __init__(self, layout: str) -> None:
        super().__init__()
        self.cells = _Cells()
        self.conv = nn.Conv2d(UNITS, UNITS, 1)  # identity 1x1 conv: a layer whose type says NCHW
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(UNITS)[:, :, None, None])
            self.conv.bias.zero_()
        self.emit = _Emit(layout)

    def forward(self, x: torch.Tensor):
        return self.emit(self.conv(self.cells(x)))


def planted_nchw() -> nn.Module:
    """Planted maps; layer ``conv`` is NCHW by its type."""
    return _Planted("nchw")


def planted_nhwc() -> nn.Module:
    """Planted maps emitted channels-last by ``emit``."""
    return _Planted("nhwc")


def planted_tokens() -> nn.Module:
    """Planted maps emitted by ``emit`` as PREFIX prefix tokens then the row-major patch tokens."""
    return _Planted("tokens")


def planted_tuple() -> nn.Module:
    """Planted maps as element 0 of a tuple."""
    return _Planted("tuple")


def planted_dict() -> nn.Module:
    """Planted maps under key ``maps`` of a dict."""
    return _Planted("dict")


def _dataset(root, h: int, w: int, n: int = 6, seed: int = 0):
    """Blue images with a red square of 2 x 2 cells at a random cell-aligned place; colour labels at full size."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        gy, gx = int(rng.integers(0, h // CELL - 1)), int(rng.integers(0, w // CELL - 1))
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 2] = 200
        color = np.full((h, w), 2)
        ys, xs = slice(gy * CELL, (gy + 2) * CELL), slice(gx * CELL, (gx + 2) * CELL)
        img[ys, xs] = (220, 10, 10)
        color[ys, xs] = 1
        rows.append(SynthRow(f"img{i:03d}", img, {"color": [color]}))
    return write_broden(root, rows, {1: ("red-c", "color"), 2: ("blue-c", "color")}, ["color"])


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("sq") / "ds", 32, 32)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("wide") / "ds", 32, 48)


# Models named `module:factory` (synth:red_unit_net, ...) resolve from the tests folder.
pytestmark = pytest.mark.usefixtures("in_tests_dir")


def _dissect(ds, tmp_path, factory: str, layer: str, *extra: str):
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros(UNITS, np.float64))
    out = tmp_path / "out"
    args = [
        "dissect", str(ds), "--model", f"test_dissect_layouts:{factory}", "--layer", layer, "--normalize", "none",
        "--workers", "0", "--batch-size", "4", "--thresholds", str(zeros), "-o", str(out), *extra,
    ]
    return CliRunner().invoke(app, args), out


def _planted_found(out, layer: str) -> str:
    """'' when unit RED (1-based RED + 1) is red-c with IoU near 1 and no other unit detects anything."""
    with open(out / f"tally_{layer}.csv", newline="") as f:
        rows = {int(r["unit"]): r for r in csv.DictReader(f)}
    if sorted(rows) != list(range(1, UNITS + 1)):
        return f"units {sorted(rows)}"
    red = rows[RED + 1]
    if red["label"] != "red-c" or float(red["score"]) < 0.9:
        return f"red unit reads {red['label']} {red['score']}"
    others = {u: r["score"] for u, r in rows.items() if u != RED + 1 and float(r["score"]) > 0.04}
    return f"other units detect: {others}" if others else ""


@pytest.mark.parametrize(
    "factory,layer,options,data",
    [
        ("planted_nchw", "conv", [], "square"),  # the model says NCHW: no --layout
        ("planted_nhwc", "emit", ["--layout", "nhwc"], "square"),
        ("planted_tokens", "emit", ["--layout", f"tokens:{PREFIX}"], "square"),
        ("planted_tokens", "emit", ["--layout", f"tokens:{PREFIX}"], "wide"),  # 4 x 6 grid derived from 32 x 48
        ("planted_tokens", "emit", ["--layout", f"tokens:{PREFIX}:4x6"], "wide"),
        ("planted_nhwc", "emit", ["--layout", "nhwc"], "wide"),
        ("planted_tuple", "emit", ["--layout", "nchw"], "wide"),  # a tuple's first element
        ("planted_dict", "emit", ["--layout", "nchw", "--layer-output", "maps"], "square"),
        ("planted_dict", "emit", ["--layout", "nchw", "--layer-output", "1"], "wide"),
    ],
)
def test_planted_unit_found_in_every_layout(request, tmp_path, factory, layer, options, data):
    result, out = _dissect(request.getfixturevalue(data), tmp_path, factory, layer, *options)
    assert result.exit_code == 0, result.output
    assert _planted_found(out, layer) == ""


def test_dict_output_without_layer_output_lists_its_keys(square, tmp_path):
    result, _ = _dissect(square, tmp_path, "planted_dict", "emit", "--layout", "nchw")
    assert result.exit_code != 0 and "attn, maps" in result.output and "--layer-output" in result.output


@pytest.mark.parametrize(
    "factory,wrong,data",
    [
        ("planted_nhwc", "nchw", "square"),  # rows read as units
        ("planted_tokens", "tokens:0:4x4", "square"),  # prefix kept: refused, 18 tokens are not 16
        ("planted_tokens", f"tokens:{PREFIX}:6x4", "wide"),  # grid transposed: the square moves
        ("planted_nhwc", "tokens:0", "square"),
    ],
)
def test_a_wrong_layout_never_finds_the_planted_unit(request, tmp_path, factory, wrong, data):
    result, out = _dissect(request.getfixturevalue(data), tmp_path, factory, "emit", "--layout", wrong)
    if result.exit_code == 0:
        assert _planted_found(out, "emit") != ""
    else:
        assert "Traceback" not in result.output and "error:" in result.output


def test_unknown_layout_is_refused_naming_shape_and_option(square, tmp_path):
    result, _ = _dissect(square, tmp_path, "planted_nhwc", "emit")
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "(4, 4, 4, 5)" in lines[0] and "--layout" in lines[0]


def test_layout_the_model_contradicts_is_refused(square, tmp_path):
    result, _ = _dissect(square, tmp_path, "planted_nchw", "conv", "--layout", "nhwc")
    assert result.exit_code != 0 and "conv" in result.output and "drop --layout" in result.output


@pytest.mark.parametrize(
    "text,want",
    [
        ("nchw", Layout("nchw")),
        ("NHWC", Layout("nhwc")),
        ("tokens", Layout("tokens")),
        ("tokens:1", Layout("tokens", 1)),
        ("tokens:5:16x20", Layout("tokens", 5, (16, 20))),
    ],
)
def test_parse_layout(text, want):
    assert parse_layout(text) == want
    assert str(parse_layout(str(want))) == str(want)


@pytest.mark.parametrize("text", ["nwhc", "tokens:", "tokens:-1", "tokens:1:16", "tokens:1:0x4", "nchw:1", "tokens:1:4x4:2", ""])
def test_parse_layout_refuses(text):
    with pytest.raises(UsageError, match="layout"):
        parse_layout(text)


def _grid_of(p):
    return lambda hw: (hw[0] // p, hw[1] // p)


def test_to_units_reads_each_layout_by_position():
    # Every value says where it belongs: unit * 100 + row * 10 + column.
    u, h, w = 3, 2, 4
    nchw = (torch.arange(u)[:, None, None] * 100 + torch.arange(h)[None, :, None] * 10 + torch.arange(w)[None, None, :]).float()[None]
    nhwc = nchw.permute(0, 2, 3, 1)
    tokens = torch.cat([torch.full((1, 2, u), -7.0), nhwc.reshape(1, h * w, u)], 1)
    assert torch.equal(to_units(nchw, "a", 1, (16, 32), Known("nchw", "test"), None), nchw)
    assert torch.equal(to_units(nhwc, "a", 1, (16, 32), None, Layout("nhwc")), nchw)
    assert torch.equal(to_units(tokens, "a", 1, (16, 32), Known("tokens", "test", 2, _grid_of(8)), None), nchw)
    assert torch.equal(to_units(tokens, "a", 1, (16, 32), None, Layout("tokens", 2)), nchw)
    assert torch.equal(to_units(tokens, "a", 1, (16, 32), None, Layout("tokens", 2, (2, 4))), nchw)
    assert torch.equal(to_units(nhwc, "a", 1, (2, 4), Known("channels", "test", channels=3), None), nchw)


@pytest.mark.parametrize(
    "shape,known,given,needle",
    [
        ((2, 7, 7, 768), None, None, "(2, 7, 7, 768) and the model does not say"),
        ((2, 197, 768), None, None, "--layout"),
        ((2, 197, 768), None, Layout("tokens"), "tokens:P"),
        ((2, 512), Known("nchw", "t"), None, "no spatial extent"),
        ((2, 512), None, Layout("nhwc"), "no spatial extent"),
        ((2, 512, 1, 1), Known("nchw", "t"), None, "spatial size above 1x1"),
        ((2, 198, 768), Known("tokens", "t", 1, _grid_of(16)), None, "198 tokens"),
        ((2, 8, 8, 8), Known("channels", "t", channels=8), None, "which axis"),
        ((3, 7, 7, 96), Known("nhwc", "t"), None, "batch of 2"),
        ((2, 7, 7, 96), Known("nhwc", "t"), Layout("nchw"), "drop --layout"),
        ((2, 197, 768), Known("tokens", "t", 1, _grid_of(16)), Layout("tokens", 0), "drop --layout"),
        ((2, 197, 768), None, Layout("tokens", 1, (10, 20)), "not the 1 + 10x20"),
        ((2, 37, 16), None, Layout("tokens", 1), "tokens:1:HxW"),
    ],
)
def test_to_units_refuses_in_one_line(shape, known, given, needle):
    with pytest.raises(ModelError) as e:
        to_units(torch.zeros(shape), "blk", 2, (224, 224), known, given)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_pick_output_rules():
    a, b = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    assert pick_output(a, "x", None) is a
    assert pick_output((a, None), "x", None) is a
    assert pick_output((a, b), "x", "1") is b
    assert pick_output({"last_hidden_state": a, "pooler_output": b}, "x", None) is a
    assert pick_output({"x": a, "n": None}, "x", None) is a
    assert pick_output({"x": a, "y": b}, "x", "y") is b
    assert pick_output({"x": a, "y": b}, "x", "1") is b
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    out = BaseModelOutputWithPooling(last_hidden_state=a, pooler_output=b)
    assert pick_output(out, "x", None) is a and pick_output(out, "x", "pooler_output") is b
    for bad, sel, needle in [
        ({"x": a, "y": b}, None, "--layer-output KEY"),
        ((a, b), "2", "not an index"),
        ({"x": a}, "z", "without element 'z'"),
        ((None, a), None, "NoneType"),
        (a, "0", "does not apply"),
        ("text", None, "not a tensor"),
    ]:
        with pytest.raises(ModelError, match=needle.replace("(", r"\(")):
            pick_output(bad, "x", sel)
