"""Models from every source: timm, transformers folders, factories with --model-arg, torchvision weights.

Expected preprocessing comes from each library's own reading of its config (timm's
``resolve_data_config``, transformers' ``AutoImageProcessor``, torchvision's ``weights.transforms()``),
never from ours.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from concepts.cli import app
from concepts.dissect.models import load_model
from synth import toy_dataset

BASE = ["--quantile", "0.1", "--workers", "0", "--batch-size", "6"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n=4)


def invoke(*args):
    result = CliRunner().invoke(app, ["dissect", *map(str, args)])
    return result


def one_error_line(result, *texts):
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def record(out):
    return json.loads((out / "run.json").read_text())


def units(out, layer):
    return len((out / f"tally_{layer}.csv").read_text().splitlines()) - 1


def close(a, b):
    return len(a) == len(b) and all(abs(x - y) < 1e-9 for x, y in zip(a, b))


# --- timm ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,layer,channels", [("convnext_atto", "stages.1", 80), ("vit_tiny_patch16_224", "patch_embed.proj", 192)])
def test_timm_model_with_its_data_config(toy, tmp_path, name, layer, channels):
    timm = pytest.importorskip("timm")
    from timm.data import resolve_data_config

    out = tmp_path / "out"
    ok(invoke(toy, "--model", f"timm:{name}", "--layer", layer, "-o", out, *BASE))
    assert units(out, layer) == channels
    pre = record(out)["preprocessing"]
    want = resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    assert close(pre["mean"], want["mean"]) and close(pre["std"], want["std"])
    assert pre["crop"] is None
    if name.startswith("vit"):
        # ViT's position embeddings fix its input: the whole 32 px image is resized to 224, never cropped.
        assert pre["resize"] == list(want["input_size"][1:]) and pre["interpolation"] == want["interpolation"]
    else:
        assert pre["resize"] is None  # a ConvNeXt takes the dataset's size as it is
    assert record(out)["versions"]["timm"] == timm.__version__


def test_timm_unknown_name_and_create_model(toy, tmp_path):
    pytest.importorskip("timm")
    line = one_error_line(invoke(toy, "--model", "timm:convnext_attoo", "--layer", "x", "-o", tmp_path / "o", *BASE), "unknown timm model")
    assert "convnext_atto" in line
    one_error_line(invoke(toy, "--model", "timm:create_model", "--layer", "x", "-o", tmp_path / "o", *BASE), "unknown timm model 'create_model'")


def test_timm_model_args_and_offline_pretrained(toy, tmp_path, monkeypatch):
    pytest.importorskip("timm")
    loaded = load_model("timm:convnext_atto", model_args=["num_classes=7", "drop_path_rate=0.1"])
    assert loaded.module.num_classes == 7
    one_error_line(invoke(toy, "--model", "timm:convnext_atto", "--model-arg", "checkpoint_path=x.pth", "--layer", "stages.1", "-o", tmp_path / "o", *BASE), "checkpoint_path", "--weights")
    import huggingface_hub.constants
    import torch.hub

    def no_download(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    line = one_error_line(invoke(toy, "--model", "timm:convnext_atto", "--pretrained", "--layer", "stages.1", "-o", tmp_path / "o", *BASE), "cannot get the published weights of timm:convnext_atto")
    assert "offline?" in line


# --- transformers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=48, patch_size=16)
    transformers.ViTModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 48, "width": 48}, image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.25, 0.3], resample=3).save_pretrained(folder)
    return folder


def test_hf_folder_with_its_image_processor(toy, tmp_path, tiny_vit):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    layer = "embeddings.patch_embeddings.projection"
    ok(invoke(toy, "--model", f"hf:{tiny_vit}", "--layer", layer, "-o", out, *BASE))
    assert units(out, layer) == 24
    rec = record(out)
    proc = transformers.AutoImageProcessor.from_pretrained(tiny_vit, local_files_only=True)
    pre = rec["preprocessing"]
    assert close(pre["mean"], proc.image_mean) and close(pre["std"], proc.image_std)
    # config.image_size fixes the input: the 32 px images are resized whole with the processor's resample.
    assert pre["resize"] == [48, 48] and pre["model_input_size"] == [48, 48]
    assert pre["interpolation"] == {2: "bilinear", 3: "bicubic"}[proc.resample]
    assert rec["model"]["class"].endswith("ViTModel") and rec["versions"]["transformers"] == transformers.__version__
    assert len(rec["model"]["weights_hash"]) == 16


def test_hf_downloads_nothing_without_pretrained(toy, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    one_error_line(invoke(toy, "--model", "hf:nobody-here/no-such-vit", "--layer", "x", "-o", tmp_path / "o", *BASE), "not in the Hugging Face cache", "--pretrained")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    line = one_error_line(invoke(toy, "--model", "hf:nobody-here/no-such-vit", "--pretrained", "--layer", "x", "-o", tmp_path / "o", *BASE), "cannot fetch hf:nobody-here/no-such-vit")
    assert "offline?" in line
    one_error_line(invoke(toy, "--model", "hf:not a repo!", "--layer", "x", "-o", tmp_path / "o", *BASE), "neither a folder nor")


def test_missing_extra_says_what_to_install(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails as if it were not installed
    one_error_line(invoke(toy, "--model", "timm:convnext_atto", "--layer", "stages.1", "-o", tmp_path / "o", *BASE), "timm is not installed", "pip install 'concept-dissection[timm]'")


# --- package.module:factory ------------------------------------------------------------------

FACTORY = '''
from __future__ import annotations

from torch import nn

CALLS = []


def build(width: int = 4, scale: float = 1.0, tag: str | None = None, relu: bool = False, pretrained: bool = False) -> nn.Module:
    CALLS.append(dict(width=width, scale=scale, tag=tag, relu=relu, pretrained=pretrained))
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU() if relu else nn.Identity(), nn.AdaptiveAvgPool2d(1))


def plain(width=3):
    return nn.Sequential(nn.Conv2d(3, width, 1), nn.AdaptiveAvgPool2d(1))
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    name = f"factory_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_factory_model_args_are_typed(toy, tmp_path, factory):
    out = tmp_path / "out"
    ok(invoke(toy, "--model", f"{factory}:build", "--model-arg", "width=6", "--model-arg", "scale=0.5", "--model-arg", "relu=true", "--model-arg", "tag=none", "--layer", "0", "-o", out, *BASE))
    call = sys.modules[factory].CALLS[-1]
    assert call == {"width": 6, "scale": 0.5, "tag": None, "relu": True, "pretrained": False}
    assert type(call["width"]) is int and type(call["scale"]) is float
    assert units(out, "0") == 6
    rec = record(out)
    assert rec["args"]["model_args"] == {"width": "6", "scale": "0.5", "relu": "true", "tag": "none"}
    assert rec["layers"]["0"]["params"]["model_args"] == rec["args"]["model_args"]
    # Untyped parameters take Python literals.
    ok(invoke(toy, "--model", f"{factory}:plain", "--model-arg", "width=5", "--layer", "0", "-o", tmp_path / "plain", *BASE))
    assert units(tmp_path / "plain", "0") == 5


def test_factory_model_arg_errors(toy, tmp_path, factory):
    line = one_error_line(invoke(toy, "--model", f"{factory}:build", "--model-arg", "depth=3", "--layer", "0", "-o", tmp_path / "o", *BASE), "no parameter 'depth'")
    assert "width, scale, tag, relu, pretrained" in line
    one_error_line(invoke(toy, "--model", f"{factory}:build", "--model-arg", "width=wide", "--layer", "0", "-o", tmp_path / "o", *BASE), "width=wide", "int")
    one_error_line(invoke(toy, "--model", f"{factory}:build", "--model-arg", "nokey", "--layer", "0", "-o", tmp_path / "o", *BASE), "KEY=VALUE")
    one_error_line(invoke(toy, "--model", "resnet18", "--model-arg", "width=2", "--layer", "layer4", "-o", tmp_path / "o", *BASE), "--model-arg")


def test_factory_pretrained_passed_or_refused(toy, tmp_path, factory):
    ok(invoke(toy, "--model", f"{factory}:build", "--pretrained", "--layer", "0", "-o", tmp_path / "o", *BASE))
    assert sys.modules[factory].CALLS[-1]["pretrained"] is True
    assert record(tmp_path / "o")["layers"]["0"]["params"]["weights"] == "pretrained"
    one_error_line(invoke(toy, "--model", f"{factory}:plain", "--pretrained", "--layer", "0", "-o", tmp_path / "o2", *BASE), "has no 'pretrained' parameter")
    assert not (tmp_path / "o2").exists()


# --- torchvision -----------------------------------------------------------------------------

def test_torchvision_pretrained_uses_its_weights_transforms(toy, tmp_path, monkeypatch):
    import torchvision

    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    # The published weights cannot be downloaded here: the random model's own state stands in for them.
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", lambda *a, **k: torchvision.models.resnet18().state_dict())
    out = tmp_path / "out"
    ok(invoke(toy, "--model", "resnet18", "--pretrained", "--layer", "layer2", "-o", out, *BASE))
    pre = record(out)["preprocessing"]
    t = weights.transforms()
    assert close(pre["mean"], t.mean) and close(pre["std"], t.std)
    assert pre["own"]["source"] == f"torchvision weights resnet18.{weights.name}"
    assert pre["own"]["interpolation"] == t.interpolation.value and pre["own"]["crop_size"] == list(t.crop_size)
    assert pre["resize"] is None and pre["crop"] is None  # a CNN takes the dataset's size; nothing is cropped
    # An explicit --normalize overrides the model's own.
    ok(invoke(toy, "--model", "resnet18", "--pretrained", "--normalize", "netdissect", "--layer", "layer2", "-o", tmp_path / "nd", *BASE))
    pre = record(tmp_path / "nd")["preprocessing"]
    assert pre["normalize"] == "netdissect" and pre["mean_std_from"] == "--normalize netdissect"


def test_torchvision_vit_is_resized_to_its_image_size(toy, tmp_path):
    import torchvision

    from concepts.dissect import dissect

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=48, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    result = dissect(vit, toy, layers=["conv_proj"], out=tmp_path / "out", workers=0, quantile=0.1)
    pre = result["preprocessing"]
    assert pre["resize"] == [48, 48] and pre["interpolation"] == "bilinear" and pre["mean_std_from"].startswith("imagenet")
    assert result["summary"]["conv_proj"]["units"] == 8

