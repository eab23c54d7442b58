"""Naming what to capture: modules, the K-th call of a reused module, functional nodes, close matches.

Expected values come from toy models with hand-set weights (worked out by hand) or from torchvision's
own feature extraction (``create_feature_extractor``), never from the capture code under test.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from concepts.dissect.hooks import capture, check_layers
from concepts.errors import ModelError, UsageError


class Twice(nn.Module):
    """``act`` runs twice: on ``conv(x)`` (call 1) and on ``conv(x) - 1`` (call 2); ``x + 1`` is a functional node."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
            self.conv.bias.zero_()

    def forward(self, x):
        y = self.act(self.conv(x))
        z = self.act(y - 1)
        return torch.add(z, 1)


def _x():
    return torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)


def test_a_reused_module_is_never_captured_at_its_first_call_silently():
    net = Twice().eval()
    check_layers(net, ["act"])  # the name exists; which call is asked at the forward pass
    with pytest.raises(ModelError) as e:
        with capture(net, ["act"], layout="nchw") as grab:
            grab(_x())
    msg = str(e.value)
    assert "runs 2 times" in msg and "act:1" in msg and "act:2" in msg and "\n" not in msg


def test_the_chosen_call_is_captured():
    net = Twice().eval()
    x = _x()
    by_hand_1 = x[:, :2].clamp(min=0)
    by_hand_2 = (by_hand_1 - 1).clamp(min=0)
    with capture(net, ["act:1", "act:2", "conv"], layout="nchw") as grab:
        got = grab(x)
        again = grab(x + 0)  # a second batch counts calls afresh
    torch.testing.assert_close(got["act:1"], by_hand_1)
    torch.testing.assert_close(got["act:2"], by_hand_2)
    torch.testing.assert_close(again["act:2"], by_hand_2)
    torch.testing.assert_close(got["conv"], x[:, :2])


@pytest.mark.parametrize("name,needle", [("act:3", "no call 3"), ("act:0", "numbered from 1")])
def test_a_call_that_does_not_exist(name, needle):
    with pytest.raises(ModelError, match=needle):
        with capture(Twice().eval(), [name], layout="nchw") as grab:
            grab(_x())


def test_resnet_block_relu_calls_and_add_node():
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ModelError, match=r"layer4\.1\.relu:2"):
        with capture(net, ["layer4.1.relu"]) as grab:
            grab(x)
    ref = create_feature_extractor(net, {"layer4.1.relu": "first", "layer4.1.relu_1": "second"})
    ref_add = create_feature_extractor(net, {"layer4.1.add": "add"})  # alone: no in-place ReLU after it
    with torch.inference_mode():
        want = {**ref(x), **ref_add(x)}
        with capture(net, ["layer4.1.relu:1", "layer4.1.relu:2"]) as grab:
            got = grab(x)
        with capture(net, ["layer4.1.add", "layer3", "layer4.1.relu:2"]) as grab:
            nodes = grab(x)
    assert (want["add"] < 0).any()  # so an in-place ReLU applied to it would show
    torch.testing.assert_close(nodes["layer4.1.relu:2"], want["second"])
    torch.testing.assert_close(got["layer4.1.relu:1"], want["first"])
    torch.testing.assert_close(got["layer4.1.relu:2"], want["second"])
    torch.testing.assert_close(nodes["layer4.1.add"], want["add"])
    assert nodes["layer3"].shape == (2, 256, 4, 4)
    # The addition precedes the block's last ReLU: the ReLU of the sum is the second call.
    torch.testing.assert_close(nodes["layer4.1.add"].clamp(min=0), got["layer4.1.relu:2"])


def test_functional_node_of_a_user_model_needs_a_layout():
    net = Twice().eval()
    with pytest.raises(ModelError, match="--layout"):
        with capture(net, ["sub"]) as grab:
            grab(_x())
    with capture(net, ["sub"], layout="nchw") as grab:
        torch.testing.assert_close(grab(_x())["sub"], _x()[:, :2].clamp(min=0) - 1)


def test_wrong_name_lists_close_matches_not_the_whole_model():
    import torchvision

    net = torchvision.models.densenet121()
    with pytest.raises(ModelError) as e:
        check_layers(net, ["features.denseblock4.denselayer16.conv3"])
    msg = str(e.value)
    assert "did you mean" in msg and "features.denseblock4.denselayer16.conv2" in msg
    assert len(msg) < 600, msg
    with pytest.raises(ModelError, match="did you mean layer4.1.relu"):
        check_layers(torchvision.models.resnet18(), ["layer4.1.rel:2"])


def test_names_of_a_model_that_does_not_trace():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.conv(x)
            return self.conv(-x)

    net = Branchy().eval()
    with capture(net, ["conv"]) as grab:
        assert grab(_x())["conv"].shape == (2, 2, 2, 2)
    with pytest.raises(ModelError, match="does not trace"):
        check_layers(net, ["relu_1"])


def test_swin_features_7_has_768_units_not_7():
    """The issue's case: channels-last 1 x 7 x 7 x 768 once became 7 units."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.swin_t().eval()
    with capture(net, ["features.7"]) as grab:
        maps = grab(torch.randn(1, 3, 224, 224))["features.7"]
    assert maps.shape == (1, 768, 7, 7)


def test_hooks_are_removed_and_bad_layout_is_a_usage_error():
    net = Twice().eval()
    with capture(net, ["conv"]) as grab:
        grab(_x())
    assert not net.conv._forward_hooks and not net.act._forward_hooks
    with pytest.raises(UsageError, match="--layout 'nwhc'"):
        with capture(net, ["conv"], layout="nwhc"):
            pass
    assert not net.conv._forward_hooks


def test_layer_output_selects_a_tuple_element():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            a, b = self.pair(x)
            return a + b

    x = _x()
    with capture(Net().eval(), ["pair"], layout="nchw") as grab:
        torch.testing.assert_close(grab(x)["pair"], x * 2)
    with capture(Net().eval(), ["pair"], layout="nchw", output="1") as grab:
        torch.testing.assert_close(grab(x)["pair"], x * 3)
