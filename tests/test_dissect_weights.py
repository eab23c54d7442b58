"""Loading models for dissection: state dicts and their wrappers, TorchScript, pickles, --pretrained."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from concepts.errors import ModelError, UsageError
from concepts.dissect.models import load_model, parse_normalize
from synth import red_unit_net


# Models named `module:factory` (synth:red_unit_net, ...) resolve from the tests folder.
pytestmark = pytest.mark.usefixtures("in_tests_dir")


def _trained(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(1)
    net = red_unit_net(num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    return net


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict", "state_dict+module"])
def test_state_dict_variants(tmp_path, wrap):
    net = _trained()
    state = net.state_dict()
    if "module" in wrap:
        state = {f"module.{k}": v for k, v in state.items()}  # as DataParallel saves it
    obj = {"state_dict": state, "epoch": 3, "arch": "red"} if wrap.startswith("state_dict") else state
    torch.save(obj, tmp_path / "w.pth")
    loaded = load_model("synth:red_unit_net", tmp_path / "w.pth")
    _same(loaded.module, net)
    assert loaded.module.head.out_features == 5  # class count read from the checkpoint
    assert not loaded.module.training
    assert len(loaded.weights_hash) == 16


def test_torchvision_class_count_from_checkpoint(tmp_path):
    import torchvision

    net = torchvision.models.get_model("alexnet", weights=None, num_classes=7)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "a.pth")
    loaded = load_model("alexnet", tmp_path / "a.pth")
    assert loaded.module.classifier[-1].out_features == 7
    _same(loaded.module, net)


def test_torchscript(tmp_path):
    net = _trained()
    torch.jit.script(net).save(str(tmp_path / "net.pt"))
    loaded = load_model("synth:red_unit_net", tmp_path / "net.pt")
    _same(loaded.module, net)
    with pytest.raises(UsageError, match="--model"):
        load_model(None, tmp_path / "net.pt")


def test_whole_pickle_needs_trust(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AvgPool2d(2))
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="--trust-pickle") as err:
        load_model(None, tmp_path / "whole.pt")
    assert "whole.pt" in str(err.value)
    loaded = load_model(None, tmp_path / "whole.pt", trust_pickle=True)
    _same(loaded.module, net)


def test_checkpoint_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth"):
        load_model("synth:red_unit_net", tmp_path / "junk.pth")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(ModelError, match="no state dict"):
        load_model("synth:red_unit_net", tmp_path / "meta.pth")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "lin.pth")
    with pytest.raises(ModelError, match="does not fit.*missing"):
        load_model("synth:red_unit_net", tmp_path / "lin.pth")
    with pytest.raises(ModelError, match="not found"):
        load_model("resnet18", tmp_path / "absent.pth")
    with pytest.raises(ModelError, match="unknown model 'resnet181'.*resnet18"):
        load_model("resnet181")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("no_such_pkg.mod:build")


def test_pretrained_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", _offline)  # no download even when online
    with pytest.raises(ModelError, match="published weights of resnet18.*--weights"):
        load_model("resnet18", pretrained=True)


def _offline(*args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="concepts.dissect"):
        a = load_model("alexnet")
    assert "untrained network" in caplog.text
    _same(a.module, load_model("alexnet").module)  # seeded: the same random weights every run


def test_parse_normalize():
    assert parse_normalize("none") is None
    mean, std = parse_normalize("netdissect")
    assert mean == (124.6901, 118.6897, 109.5388) and std == (57.12,) * 3
    mean, std = parse_normalize("0.5,0.5,0.5/0.25,0.25,0.25")
    assert mean == (127.5,) * 3 and std == (63.75,) * 3
    assert parse_normalize("100,110,120/50,50,50") == ((100.0, 110.0, 120.0), (50.0, 50.0, 50.0))
    with pytest.raises(UsageError, match="--normalize"):
        parse_normalize("imagenett")


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "fcn_resnet50"])
def test_segmentation_models_download_nothing_without_pretrained(name, monkeypatch) -> None:
    # torchvision's segmentation builders fetch ImageNet backbone weights unless told not to.
    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    from concepts.dissect.models import load_model

    loaded = load_model(name, None)
    assert isinstance(loaded.module, torch.nn.Module)


def test_safetensors_checkpoint(tmp_path):
    from safetensors.torch import save_file

    net = _trained()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_model("synth:red_unit_net", tmp_path / "w.safetensors")
    _same(loaded.module, net)
    assert loaded.module.head.out_features == 5
    (tmp_path / "bad.safetensors").write_bytes((40).to_bytes(8, "little") + b'{"x": [1, 2')
    with pytest.raises(ModelError, match="bad.safetensors.*safetensors"):
        load_model("synth:red_unit_net", tmp_path / "bad.safetensors")


def test_model_object_refuses_weights_and_pretrained(tmp_path):
    net = _trained()
    for kwargs in ({"weights": tmp_path / "w.pth"}, {"pretrained": True}, {"model_args": ["a=1"]}):
        with pytest.raises(UsageError, match="model object"):
            load_model(net, **kwargs)
    with pytest.raises(UsageError, match="torch.nn.Module, not a int"):
        load_model(3)
