"""How a layer's output holds its units, and turning it into ``N x units x h x w`` maps.

Units are channels. Three layouts are read:

- ``nchw``: ``N x C x H x W``, as convolutions emit;
- ``nhwc``: channels-last ``N x H x W x C`` (torchvision and timm Swin stages, timm NHWC models), permuted;
- ``tokens``: ``N x T x C`` token sequences of ViT-family models. The first ``P`` tokens are prefix
  tokens (class, distillation, register tokens) and are dropped; the other ``T - P`` are patches in
  row-major order, folded back into the patch grid ``gh x gw`` (the input size over the patch size).

Where the layout comes from, in this order, is the rule "known for certain": the model states it, or
the user does (``--layout``); a shape alone never decides.

1. The module's type, whose documented output is channels-first whatever surrounds it: 2-D
   convolutions, batch/instance/group norms, 2-D pools, upsampling, pixel shuffles, 2-D paddings and
   dropout, and the building blocks of torchvision CNNs (ResNet blocks, dense layers, inverted residuals,
   MBConv, ConvNeXt's CNBlock, MaxViT's stages and blocks, which torchvision documents as ``B x C x H x W``).
   torchvision's Swin blocks, patch merging and window attention, and timm's Swin blocks and stages, are
   channels-last. torchvision's ``Permute`` module says its layout by its dims.
2. ViT families, by model config: inside a torchvision ``VisionTransformer``'s ``encoder`` (1 class token,
   ``patch_size``); inside a timm ViT/DeiT/BEiT/EVA/DINOv2 (``num_prefix_tokens``, ``patch_embed``'s patch
   and grid size, ``dynamic_img_size``) its ``blocks``, ``norm``, ``norm_pre``, ``pos_drop`` and
   ``patch_drop``, and ``patch_embed`` itself (no prefix yet); inside a transformers vision model whose
   ``config.model_type`` has a documented token layout (:data:`HF_PREFIX`: ViT, DeiT, DINOv2 and its
   register variants, DINOv3, CLIP and SigLIP vision towers, BEiT, Data2Vec-vision, ViT-MSN) every module,
   ``patch_embeddings`` without prefix. A token output must have exactly ``P + gh * gw`` tokens, or it is
   refused (windowed attention inside a stage, for one, never passes for a grid).
3. Inside a torchvision ``SwinTransformer``'s ``features`` and ``norm``, outside the window attention's
   own submodules: channels-last.
4. ``nn.Sequential`` (not overriding ``forward``) emits what its last child emits; a shape-preserving
   module (activations, dropout, identity, stochastic depth, ``LayerNorm``, ``Linear``) inside such a
   sequence emits the layout of the child before it.
5. Any module (or functional node) inside a CNN whose forward code never permutes: torchvision's AlexNet,
   VGG, ResNet, DenseNet, GoogLeNet, Inception v3, MobileNet v2/v3, MNASNet, ShuffleNet v2, SqueezeNet,
   EfficientNet, RegNet, FCN/DeepLabV3/LRASPP on those, and timm's ResNet, EfficientNet, MobileNetV3,
   RegNet and DenseNet: channels-first. (ConvNeXt is not one: its blocks permute to channels-last
   inside, so only its stages, blocks and typed modules are known.) The final ``norm`` of a timm model
   whose ``output_fmt`` is NHWC (Swin) is channels-last.
6. A timm model's ``feature_info`` module: the model's ``output_fmt`` when it states one; otherwise the
   declared ``num_chs`` names the channel axis, which must then be the only axis of that size.

Anything else (a ReLU called from a hand-written ``forward``, a functional node of a user's model) needs
``--layout``; an explicit ``--layout`` that contradicts what the model states is refused.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from concepts.errors import ModelError, UsageError

KINDS = ("nchw", "nhwc", "tokens")
LAYOUT_HELP = "nchw, nhwc, tokens, tokens:P (P prefix tokens) or tokens:P:HxW (and an H x W patch grid)"

# transformers `model_type` -> prefix tokens before the patches (CLS, distillation, registers).
HF_PREFIX: dict[str, Callable[[object], int]] = {
    "vit": lambda c: 1,
    "deit": lambda c: 2,
    "dinov2": lambda c: 1,
    "dinov2_with_registers": lambda c: 1 + int(getattr(c, "num_register_tokens", 0)),
    "dinov3_vit": lambda c: 1 + int(getattr(c, "num_register_tokens", 0)),
    "clip_vision_model": lambda c: 1,
    "siglip_vision_model": lambda c: 0,
    "beit": lambda c: 1,
    "data2vec-vision": lambda c: 1,
    "vit_msn": lambda c: 1,
}


@dataclass(frozen=True)
class Layout:
    """A layout given by the user: kind, and for tokens the prefix count and grid when known."""

    kind: str
    prefix: int | None = None
    grid: tuple[int, int] | None = None

    def __str__(self) -> str:
        text = self.kind
        if self.prefix is not None:
            text += f":{self.prefix}"
        if self.grid is not None:
            text += f":{self.grid[0]}x{self.grid[1]}"
        return text


@dataclass(frozen=True)
class Known:
    """A layout the model states: ``kind`` (nchw, nhwc, tokens, or channels: axis of ``channels`` units)."""

    kind: str
    why: str
    prefix: int = 0
    grid: Callable[[tuple[int, int]], tuple[int, int]] | None = None
    channels: int | None = None


def parse_layout(text: str | None) -> Layout | None:
    """Read ``--layout`` (nchw, nhwc, tokens, tokens:P, tokens:P:HxW); a bad value is a UsageError."""
    if text is None:
        return None
    raw = str(text).strip().lower()
    m = re.fullmatch(r"(nchw|nhwc|tokens)(?::(\d+)(?::(\d+)x(\d+))?)?", raw)
    if not m or (m.group(1) != "tokens" and m.group(2) is not None):
        raise UsageError(f"--layout {text!r} is not a layout; use {LAYOUT_HELP}")
    kind, prefix, gh, gw = m.groups()
    grid = (int(gh), int(gw)) if gh is not None else None
    if grid is not None and min(grid) < 1:
        raise UsageError(f"--layout {text!r}: the patch grid must be at least 1x1")
    return Layout(kind, int(prefix) if prefix is not None else None, grid)


# ---------------------------------------------------------------- what the model states


def _classes(spec: Mapping[str, tuple[str, ...]]) -> tuple[type, ...]:
    found = []
    for mod, names in spec.items():
        try:
            m = importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - an optional library (timm) or an older torchvision lacks it
            continue
        found += [getattr(m, n) for n in names if isinstance(getattr(m, n, None), type)]
    return tuple(found)


_CACHE: dict[str, tuple[type, ...]] = {}


def _types(key: str) -> tuple[type, ...]:
    if key not in _CACHE:
        _CACHE[key] = _classes(_SPECS[key])
    return _CACHE[key]


_TV = "torchvision.models."
_SPECS: dict[str, dict[str, tuple[str, ...]]] = {
    "nchw": {
        "torch.nn": (
            "Conv2d", "ConvTranspose2d", "LazyConv2d", "LazyConvTranspose2d", "BatchNorm2d", "LazyBatchNorm2d",
            "SyncBatchNorm", "InstanceNorm2d", "GroupNorm", "LocalResponseNorm", "MaxPool2d", "AvgPool2d",
            "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "LPPool2d", "FractionalMaxPool2d", "Dropout2d", "Upsample",
            "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle", "ZeroPad2d",
            "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d", "CircularPad2d", "Fold", "ChannelShuffle",
        ),
        "torchvision.ops": ("FrozenBatchNorm2d", "Conv2dNormActivation", "SqueezeExcitation", "DeformConv2d"),
        _TV + "resnet": ("BasicBlock", "Bottleneck"),
        _TV + "densenet": ("_DenseLayer", "_DenseBlock", "_Transition"),
        _TV + "efficientnet": ("MBConv", "FusedMBConv"),
        _TV + "mobilenetv2": ("InvertedResidual",),
        _TV + "mobilenetv3": ("InvertedResidual",),
        _TV + "mnasnet": ("_InvertedResidual",),
        _TV + "shufflenetv2": ("InvertedResidual",),
        _TV + "squeezenet": ("Fire",),
        _TV + "googlenet": ("Inception", "BasicConv2d"),
        _TV + "inception": ("InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "BasicConv2d"),
        _TV + "regnet": ("ResBottleneckBlock", "AnyStage", "SimpleStemIN"),
        _TV + "convnext": ("CNBlock", "LayerNorm2d"),
        _TV + "maxvit": ("MBConv", "PartitionAttentionLayer", "MaxVitLayer", "MaxVitBlock"),
    },
    "nhwc": {
        _TV + "swin_transformer": (
            "SwinTransformerBlock", "SwinTransformerBlockV2", "PatchMerging", "PatchMergingV2",
            "ShiftedWindowAttention", "ShiftedWindowAttentionV2",
        ),
        "timm.models.swin_transformer": ("SwinTransformerBlock", "SwinTransformerStage", "PatchMerging"),
        "timm.models.swin_transformer_v2": ("SwinTransformerV2Block", "SwinTransformerV2Stage", "PatchMerging"),
    },
    "inherit": {
        "torch.nn": (
            "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Hardswish",
            "Hardsigmoid", "Hardtanh", "Sigmoid", "Tanh", "Softplus", "Dropout", "AlphaDropout", "Identity",
            "LayerNorm", "Linear",
        ),
        "torchvision.ops": ("StochasticDepth",),
    },
    "cnn": {
        _TV + "alexnet": ("AlexNet",),
        _TV + "vgg": ("VGG",),
        _TV + "resnet": ("ResNet",),
        _TV + "densenet": ("DenseNet",),
        _TV + "googlenet": ("GoogLeNet",),
        _TV + "inception": ("Inception3",),
        _TV + "mobilenetv2": ("MobileNetV2",),
        _TV + "mobilenetv3": ("MobileNetV3",),
        _TV + "mnasnet": ("MNASNet",),
        _TV + "shufflenetv2": ("ShuffleNetV2",),
        _TV + "squeezenet": ("SqueezeNet",),
        _TV + "efficientnet": ("EfficientNet",),
        _TV + "regnet": ("RegNet",),
        _TV + "segmentation.fcn": ("FCN",),
        _TV + "segmentation.deeplabv3": ("DeepLabV3",),
        _TV + "segmentation.lraspp": ("LRASPP",),
        "timm.models.resnet": ("ResNet",),
        "timm.models.efficientnet": ("EfficientNet",),
        "timm.models.mobilenetv3": ("MobileNetV3",),
        "timm.models.regnet": ("RegNet",),
        "timm.models.densenet": ("DenseNet",),
    },
    "tv_vit": {_TV + "vision_transformer": ("VisionTransformer",)},
    "tv_swin": {_TV + "swin_transformer": ("SwinTransformer",)},
    "tv_window": {_TV + "swin_transformer": ("ShiftedWindowAttention", "ShiftedWindowAttentionV2")},
    "permute": {"torchvision.ops.misc": ("Permute",)},
}


def _by_grid(p: object) -> Callable[[tuple[int, int]], tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else tuple(int(v) for v in p)  # type: ignore[misc]
    return lambda hw: (hw[0] // ph, hw[1] // pw)


def _chain(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` from the root down to ``name``."""
    out = [("", model)]
    if not name:
        return out
    parts = name.split(".")
    mod = model
    for i, part in enumerate(parts):
        mod = mod._modules[part]  # type: ignore[assignment]
        out.append((".".join(parts[: i + 1]), mod))
    return out


def _rel(name: str, anc: str) -> str:
    return name if not anc else name[len(anc) + 1 :] if name != anc else ""


def _family(chain: list[tuple[str, nn.Module]], name: str) -> Known | None:
    """Rules 2, 3 and 5: the ViT, Swin or CNN the module sits in."""
    for anc, a in reversed(chain):
        rel = _rel(name, anc)
        head = rel.split(".")[0]
        if _types("tv_vit") and isinstance(a, _types("tv_vit")):
            if head == "encoder":
                return Known("tokens", "torchvision VisionTransformer encoder", 1, _by_grid(a.patch_size))
            return None
        if _is_timm_vit(a):
            pe = a.patch_embed
            if head == "patch_embed" and rel == "patch_embed":
                fmt = str(getattr(pe.output_fmt, "value", pe.output_fmt))
                if getattr(pe, "flatten", False):
                    return Known("tokens", "timm patch embedding", 0, _timm_grid(a))
                return Known(fmt.lower(), f"timm patch embedding ({fmt})") if fmt in ("NCHW", "NHWC") else None
            if head in ("blocks", "norm", "norm_pre", "pos_drop", "patch_drop"):
                return Known("tokens", f"timm {type(a).__name__}", int(a.num_prefix_tokens), _timm_grid(a))
            return None
        cfg = getattr(a, "config", None)
        mtype = getattr(cfg, "model_type", None)
        if mtype in HF_PREFIX and getattr(cfg, "patch_size", None) is not None:
            if name.rsplit(".", 1)[-1] == "patch_embeddings":
                return Known("tokens", f"transformers {mtype} patch embeddings", 0, _by_grid(cfg.patch_size))
            return Known("tokens", f"transformers {mtype}", HF_PREFIX[mtype](cfg), _by_grid(cfg.patch_size))
        if _types("tv_swin") and isinstance(a, _types("tv_swin")):
            inner = [m for q, m in chain if q.startswith(anc) and q != name]
            if head in ("features", "norm") and not any(isinstance(m, _types("tv_window")) for m in inner):
                return Known("nhwc", "torchvision SwinTransformer (channels-last)")
            return None
        if type(a).__module__.startswith("timm.") and getattr(a, "output_fmt", None) == "NHWC" and rel == "norm":
            return Known("nhwc", f"timm {type(a).__name__} final norm (output_fmt NHWC)")
        if _types("cnn") and isinstance(a, _types("cnn")):
            return Known("nchw", f"{type(a).__module__.split('.')[0]} {type(a).__name__}")
    return None


def _is_timm_vit(a: nn.Module) -> bool:
    pe = getattr(a, "patch_embed", None)
    return (
        type(a).__module__.startswith("timm.")
        and isinstance(getattr(a, "num_prefix_tokens", None), int)
        and pe is not None
        and getattr(pe, "patch_size", None) is not None
        and hasattr(a, "blocks")
    )


def _timm_grid(a: nn.Module) -> Callable[[tuple[int, int]], tuple[int, int]]:
    pe = a.patch_embed
    if getattr(a, "dynamic_img_size", False) and hasattr(pe, "dynamic_feat_size"):
        return lambda hw: tuple(int(v) for v in pe.dynamic_feat_size(hw))  # type: ignore[return-value]
    if getattr(pe, "grid_size", None) is not None:
        fixed = tuple(int(v) for v in pe.grid_size)
        return lambda hw: fixed  # type: ignore[return-value]
    return _by_grid(pe.patch_size)


def _timm_features(chain: list[tuple[str, nn.Module]], name: str) -> Known | None:
    """Rule 6: a module timm's ``feature_info`` lists."""
    for anc, a in reversed(chain):
        if not type(a).__module__.startswith("timm.") or not isinstance(getattr(a, "feature_info", None), list):
            continue
        rel = _rel(name, anc)
        for info in a.feature_info:
            if isinstance(info, dict) and info.get("module") == rel:
                fmt = str(getattr(a, "output_fmt", "") or "")
                if fmt in ("NCHW", "NHWC"):
                    return Known(fmt.lower(), f"timm {type(a).__name__} output_fmt {fmt}")
                return Known("channels", f"timm {type(a).__name__} feature_info ({info.get('num_chs')} channels)", channels=int(info["num_chs"]))
    return None


def _own(chain: list[tuple[str, nn.Module]], model: nn.Module) -> Known | None:
    """Rules 1 and 4: the module's own type, or the sequence it sits in."""
    name, m = chain[-1]
    if _types("nchw") and isinstance(m, _types("nchw")):
        return Known("nchw", f"{type(m).__name__} output")
    if _types("nhwc") and isinstance(m, _types("nhwc")):
        return Known("nhwc", f"{type(m).__name__} output (channels-last)")
    if _types("permute") and isinstance(m, _types("permute")):
        dims = list(getattr(m, "dims", []))
        return Known("nhwc", "Permute to channels-last") if dims == [0, 2, 3, 1] else Known("nchw", "Permute to channels-first") if dims == [0, 3, 1, 2] else None
    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
        keys = list(m._modules)
        if keys:
            return layout_of(model, f"{name}.{keys[-1]}" if name else keys[-1])
    if _types("inherit") and isinstance(m, _types("inherit")) and len(chain) > 1:
        parent_name, parent = chain[-2]
        if isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward:
            keys = list(parent._modules)
            i = keys.index(name.rsplit(".", 1)[-1])
            if i > 0:
                prev = keys[i - 1]
                return layout_of(model, f"{parent_name}.{prev}" if parent_name else prev)
    return None


def layout_of(model: nn.Module, name: str, *, functional: bool = False) -> Known | None:
    """What the model states about the layout of module ``name``'s output (or of functional node ``name``)."""
    if functional:
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        return _family(_chain(model, owner), name)
    chain = _chain(model, name)
    return _own(chain, model) or _family(chain, name) or _timm_features(chain, name)


# ---------------------------------------------------------------- reading an output


def pick_output(output: object, name: str, selector: str | None) -> torch.Tensor:
    """The tensor a layer's output holds: itself, the ``--layer-output`` element, or the hidden state.

    Without a selector: a tuple or list gives its first element (the hidden state by the convention of
    ``nn.MultiheadAttention`` and transformers layers); a dict or ``ModelOutput`` its ``last_hidden_state``,
    or its only tensor; anything else is refused with the keys to choose from.
    """
    if isinstance(output, torch.Tensor):
        if selector is not None:
            raise ModelError(f"layer {name!r} outputs a tensor, not a tuple or dict; --layer-output {selector} does not apply to it")
        return output
    if isinstance(output, Mapping):
        keys = [k for k, v in output.items() if v is not None]
        if selector is not None:
            if selector in output:
                got = output[selector]
            elif selector.lstrip("-").isdigit() and -len(keys) <= int(selector) < len(keys):
                got = output[keys[int(selector)]]
            else:
                raise ModelError(f"layer {name!r} outputs a {type(output).__name__} without element {selector!r}; it holds {', '.join(map(str, keys))}")
        elif "last_hidden_state" in output:
            got = output["last_hidden_state"]
        else:
            tensors = [k for k in keys if isinstance(output[k], torch.Tensor)]
            if len(tensors) != 1:
                raise ModelError(f"layer {name!r} outputs a {type(output).__name__} with elements {', '.join(map(str, keys))}; say which with --layer-output KEY")
            got = output[tensors[0]]
        where = f"element {selector!r}" if selector is not None else "its hidden state"
    elif isinstance(output, (tuple, list)):
        if selector is None:
            i = 0
        elif selector.lstrip("-").isdigit() and -len(output) <= int(selector) < len(output):
            i = int(selector)
        else:
            raise ModelError(f"layer {name!r} outputs a {type(output).__name__} of {len(output)} elements; --layer-output {selector!r} is not an index of it")
        if not output:
            raise ModelError(f"layer {name!r} outputs an empty {type(output).__name__}")
        got, where = output[i], f"element {i}"
    else:
        raise ModelError(f"layer {name!r} outputs a {type(output).__name__}, not a tensor")
    if not isinstance(got, torch.Tensor):
        raise ModelError(f"layer {name!r}: {where} of its output is a {type(got).__name__}, not a tensor; choose another with --layer-output")
    return got


def _no_space(name: str, shape: tuple[int, ...]) -> ModelError:
    return ModelError(f"layer {name!r} outputs shape {shape}, with no spatial extent; dissection needs N x units x h x w feature maps")


def to_units(t: torch.Tensor, name: str, batch: int, hw: tuple[int, int], known: Known | None, given: Layout | None) -> torch.Tensor:
    """Turn layer ``name``'s output into contiguous ``N x units x h x w`` maps, or refuse it in one line."""
    shape = tuple(t.shape)
    if t.ndim not in (3, 4):
        raise _no_space(name, shape)
    if shape[0] != batch:
        raise ModelError(f"layer {name!r} outputs shape {shape} for a batch of {batch} images; its first axis is not the images")
    if known is not None and known.kind == "channels":
        c = known.channels
        if t.ndim == 4 and (shape[1] == c) != (shape[3] == c):
            known = Known("nchw" if shape[1] == c else "nhwc", known.why)
        else:
            raise ModelError(f"layer {name!r} outputs shape {shape}; the model declares {c} channels, which does not say which axis holds them; give --layout nchw or --layout nhwc")
    if known is not None and given is not None:
        clash = known.kind != given.kind or (known.kind == "tokens" and given.prefix is not None and given.prefix != known.prefix)
        if known.kind == "tokens" and given.grid is not None and known.grid is not None and tuple(known.grid(hw)) != given.grid:
            clash = True
        if clash:
            raise ModelError(f"layer {name!r}: the model states layout {_describe(known, hw)} ({known.why}), but --layout says {given}; drop --layout")
    if known is None and given is None:
        raise ModelError(
            f"layer {name!r} outputs shape {shape} and the model does not say how it holds units; "
            f"give --layout {LAYOUT_HELP}"
        )
    kind = known.kind if known is not None else given.kind  # type: ignore[union-attr]
    if kind in ("nchw", "nhwc"):
        if t.ndim != 4:
            raise ModelError(f"layer {name!r} outputs shape {shape}, not the 4-D {kind.upper()} maps {_source(known, given)} says")
        if kind == "nhwc":
            t = t.permute(0, 3, 1, 2)
        if t.shape[2] * t.shape[3] < 2:
            raise ModelError(f"layer {name!r} outputs {t.shape[2]}x{t.shape[3]} maps ({shape} read as {kind.upper()}); dissection needs spatial size above 1x1")
        return t.contiguous()
    if t.ndim != 3:
        raise ModelError(f"layer {name!r} outputs shape {shape}, not the N x tokens x channels sequence {_source(known, given)} says")
    n, tokens, c = shape
    if known is not None:
        prefix, grid = known.prefix, tuple(known.grid(hw)) if known.grid else None
    else:
        assert given is not None
        if given.prefix is None:
            raise ModelError(f"layer {name!r} outputs {tokens} tokens and the model does not say how many are prefix tokens; give --layout tokens:P (P = 0 when every token is a patch)")
        prefix, grid = given.prefix, given.grid
        if grid is None:
            grid = _square_patch_grid(tokens - prefix, hw)
            if grid is None:
                raise ModelError(f"layer {name!r}: {tokens - prefix} patch tokens do not tile a {hw[0]}x{hw[1]} input with square patches; give the grid: --layout tokens:{prefix}:HxW")
    if grid is None or tokens != prefix + grid[0] * grid[1]:
        want = f"{prefix} + {grid[0]}x{grid[1]}" if grid else f"{prefix} + a grid"
        raise ModelError(f"layer {name!r} outputs {tokens} tokens ({shape}), not the {want} that {_source(known, given)} gives for a {hw[0]}x{hw[1]} input")
    if grid[0] * grid[1] < 2:
        raise ModelError(f"layer {name!r} has a {grid[0]}x{grid[1]} patch grid; dissection needs spatial size above 1x1")
    return t[:, prefix:, :].reshape(n, grid[0], grid[1], c).permute(0, 3, 1, 2).contiguous()


def _square_patch_grid(patches: int, hw: tuple[int, int]) -> tuple[int, int] | None:
    """The grid of square ``p x p`` patches tiling ``hw`` with exactly ``patches`` cells, if one does."""
    if patches < 1:
        return None
    p = math.isqrt(hw[0] * hw[1] // patches) if hw[0] * hw[1] >= patches else 0
    for q in (p, p + 1):
        if q >= 1 and hw[0] % q == 0 and hw[1] % q == 0 and (hw[0] // q) * (hw[1] // q) == patches:
            return hw[0] // q, hw[1] // q
    return None


def _describe(known: Known, hw: tuple[int, int]) -> str:
    if known.kind != "tokens":
        return known.kind
    grid = known.grid(hw) if known.grid else None
    return f"tokens:{known.prefix}" + (f":{grid[0]}x{grid[1]}" if grid else "")


def _source(known: Known | None, given: Layout | None) -> str:
    return known.why if known is not None else f"--layout {given}"
