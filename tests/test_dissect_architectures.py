"""Every common architecture at random weights: units are the layer's channels, maps the layer's grid.

One registry, one parametrised test (the test that would have caught Swin's ``features.7`` read as 7
units). Channel counts and grids are the architectures' published ones (the stage widths of each
paper and library), not read back from our own code; token models also check that the prefix tokens
(class, distillation, registers) are the ones dropped. Plus the two cases of the issue end to end.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from concepts.cli import app
from concepts.dissect.hooks import capture
from synth import toy_dataset


@dataclass(frozen=True)
class Arch:
    """A model, a layer, an input size, and what the layer must give: units, grid, raw layout."""

    build: Callable[[], nn.Module]
    layer: str
    size: tuple[int, int]
    units: int
    grid: tuple[int, int]
    raw: str = "nchw"  # how the layer's raw output holds them: nchw, nhwc, or tokens:P (P prefix tokens)


ARCHS: dict[str, Arch] = {}


def register(name: str, arch: Arch) -> None:
    """Add an architecture; a name is registered once."""
    if name in ARCHS:
        raise ValueError(f"architecture {name} registered twice")
    ARCHS[name] = arch


_LAST: dict[str, nn.Module] = {}


def _once(key: str, make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A builder reusing the model just built for the same key (cases of one model run one after another)."""

    def build():
        if key not in _LAST:
            _LAST.clear()
            torch.manual_seed(0)
            _LAST[key] = make().eval()
        return _LAST[key]

    return build


def _tv(name: str, **kw):
    import torchvision

    return _once(f"tv {name} {kw}", lambda: torchvision.models.get_model(name, weights=None, **kw))


def _timm(name: str, **kw):
    def make():
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, **kw)

    return _once(f"timm {name} {kw}", make)


def _hf(model: str, config: str, **kw):
    def make():
        transformers = pytest.importorskip("transformers")
        base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
        return getattr(transformers, model)(getattr(transformers, config)(**{**base, **kw}))

    return _once(f"hf {model} {kw}", make)


def _small_vit():
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def _maxvit():
    from torchvision.models import MaxVit

    # maxvit_t's stages and widths; partition size 2 instead of 7 so a 64 x 64 input tiles every stage.
    return MaxVit(input_size=(64, 64), stem_channels=64, partition_size=2, block_channels=[64, 128, 256, 512], block_layers=[2, 2, 5, 2], head_dim=32, stochastic_depth_prob=0.2)


S = (64, 64)
register("resnet18", Arch(_tv("resnet18"), "layer4", S, 512, (2, 2)))
register("resnet18-second-relu", Arch(_tv("resnet18"), "layer4.1.relu:2", S, 512, (2, 2)))
register("resnet18-add", Arch(_tv("resnet18"), "layer4.1.add", S, 512, (2, 2)))
register("alexnet", Arch(_tv("alexnet"), "features.12", (128, 128), 256, (3, 3)))
register("vgg11", Arch(_tv("vgg11"), "features.19", S, 512, (4, 4)))
register("densenet121", Arch(_tv("densenet121"), "features.denseblock4", S, 1024, (2, 2)))
register("mobilenet_v3_small", Arch(_tv("mobilenet_v3_small"), "features.12", S, 576, (2, 2)))
register("efficientnet_b0", Arch(_tv("efficientnet_b0"), "features.8", S, 1280, (2, 2)))
register("convnext_tiny", Arch(_tv("convnext_tiny"), "features.7", S, 768, (2, 2)))
register("convnext_tiny-block-inside", Arch(_tv("convnext_tiny"), "features.1.0.block.3", S, 384, (16, 16), "nhwc"))
register("vit_b_16", Arch(_tv("vit_b_16", image_size=64), "encoder.layers.encoder_layer_11", S, 768, (4, 4), "tokens:1"))
register("vit-attention", Arch(_small_vit, "encoder.layers.encoder_layer_0.self_attention", S, 32, (4, 4), "tokens:1"))
register("vit-encoder-ln", Arch(_small_vit, "encoder.ln", S, 32, (4, 4), "tokens:1"))
register("swin_t", Arch(_tv("swin_t"), "features.7", S, 768, (2, 2), "nhwc"))  # at 224: 7 x 7 (test_dissect_capture)
register("swin_t-stage1", Arch(_tv("swin_t"), "features.1", S, 96, (16, 16), "nhwc"))
register("swin_v2_t", Arch(_tv("swin_v2_t"), "features.5", S, 384, (4, 4), "nhwc"))
register("maxvit_t", Arch(_maxvit, "blocks.3", S, 512, (2, 2)))
register("timm-vit_tiny", Arch(_timm("vit_tiny_patch16_224", img_size=64), "blocks.11", S, 192, (4, 4), "tokens:1"))
register("timm-vit_tiny-nonsquare", Arch(_timm("vit_tiny_patch16_224", img_size=64, dynamic_img_size=True), "blocks.2", (64, 96), 192, (4, 6), "tokens:1"))
register("timm-deit_distilled", Arch(_timm("deit_tiny_distilled_patch16_224", img_size=64, depth=2), "blocks.1", S, 192, (4, 4), "tokens:2"))
register("timm-dinov2_reg4", Arch(_timm("vit_small_patch14_reg4_dinov2", img_size=56, depth=2), "blocks.1", (56, 56), 384, (4, 4), "tokens:5"))
register("timm-beit", Arch(_timm("beit_base_patch16_224", img_size=64, depth=2), "blocks.1", S, 768, (4, 4), "tokens:1"))
register("timm-eva02", Arch(_timm("eva02_tiny_patch14_224", img_size=56, depth=2), "norm", (56, 56), 192, (4, 4), "tokens:1"))
register("timm-swin_tiny", Arch(_timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4), "layers.3", S, 768, (2, 2), "nhwc"))
register("timm-swin_tiny-norm", Arch(_timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4), "norm", S, 768, (2, 2), "nhwc"))
register("timm-convnext_atto", Arch(_timm("convnext_atto"), "stages.3", S, 320, (2, 2)))
register("timm-resnet18", Arch(_timm("resnet18"), "layer4.1.act2", S, 512, (2, 2)))
register("hf-vit", Arch(_hf("ViTModel", "ViTConfig"), "layers.1", (32, 32), 32, (4, 4), "tokens:1"))
register("hf-vit-embeddings", Arch(_hf("ViTModel", "ViTConfig"), "embeddings.patch_embeddings", (32, 32), 32, (4, 4), "tokens:0"))
register("hf-deit", Arch(_hf("DeiTModel", "DeiTConfig"), "layers.1", (32, 32), 32, (4, 4), "tokens:2"))
register("hf-dinov2-nonsquare", Arch(_hf("Dinov2Model", "Dinov2Config"), "layernorm", (32, 48), 32, (4, 6), "tokens:1"))
register("hf-dinov2-registers", Arch(_hf("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", num_register_tokens=4), "encoder.layer.1", (32, 48), 32, (4, 6), "tokens:5"))
register("hf-clip-vision", Arch(_hf("CLIPVisionModel", "CLIPVisionConfig"), "encoder.layers.1", (32, 32), 32, (4, 4), "tokens:1"))
register("hf-siglip-vision", Arch(_hf("SiglipVisionModel", "SiglipVisionConfig"), "encoder.layers.1", (32, 32), 32, (4, 4), "tokens:0"))


def _raw_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's raw tensor, by a plain hook (the call asked for with ':K'), for the layout check."""
    from torchvision.models.feature_extraction import create_feature_extractor

    name, _, k = layer.partition(":")
    modules = dict(model.named_modules())
    if name not in modules:
        return create_feature_extractor(model, {name: "x"})(x)["x"]
    seen: list[torch.Tensor] = []

    def hook(_m, _i, out):
        seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    h = modules[name].register_forward_hook(hook)
    try:
        model(x)
    finally:
        h.remove()
    return seen[int(k or 1) - 1]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_units_are_the_layers_channels(name):
    arch = ARCHS[name]
    torch.manual_seed(0)
    model = arch.build().eval()
    x = torch.randn(1, 3, *arch.size)
    with torch.inference_mode():
        with capture(model, [arch.layer]) as grab:
            maps = grab(x)[arch.layer]
        raw = _raw_output(model, arch.layer, x)
    assert tuple(maps.shape) == (1, arch.units, *arch.grid), f"{name}: {tuple(maps.shape)}"
    # The maps are the raw output's values in the place the architecture puts them.
    if arch.raw == "nchw":
        expected = raw
    elif arch.raw == "nhwc":
        expected = raw.permute(0, 3, 1, 2)
    else:
        prefix = int(arch.raw.split(":")[1])
        assert raw.shape[1] == prefix + arch.grid[0] * arch.grid[1]
        expected = raw[:, prefix:].reshape(1, *arch.grid, arch.units).permute(0, 3, 1, 2)
    torch.testing.assert_close(maps, expected)


# Models named `module:factory` (synth:red_unit_net, ...) resolve from the tests folder.
pytestmark = pytest.mark.usefixtures("in_tests_dir")


@pytest.mark.parametrize("model,layer,size,units", [("swin_t", "features.7", 64, 768), ("vit_b_16", "encoder.layers.encoder_layer_11", 224, 768)])
def test_issue_cases_end_to_end(tmp_path, model, layer, size, units):
    """``--model swin_t --layer features.7`` once gave 7 units; ViT encoder layers were refused."""
    ds = toy_dataset(tmp_path / "ds", n=2, size=size, seg=16)
    out = tmp_path / "out"
    args = ["dissect", str(ds), "--model", model, "--layer", layer, "--normalize", "imagenet", "--workers", "0", "--batch-size", "2", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert json.loads((out / "summary.json").read_text())[layer]["units"] == units, record
    with open(out / f"tally_{layer}.csv", newline="") as f:
        assert sorted(int(r["unit"]) for r in csv.DictReader(f)) == list(range(1, units + 1))
