"""Build the model to dissect and find its own preprocessing.

Sources: torchvision names, ``timm:NAME``, ``hf:OWNER/NAME`` or ``hf:FOLDER`` (``hf-backbone:`` for
AutoBackbone), ``package.module:factory`` with typed ``--model-arg`` values, an ``nn.Module``
already in memory, plus state-dict, TorchScript and safetensors checkpoints. Nothing is
downloaded without ``pretrained``.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import inspect
import logging
import math
import os
import pickle
import re
import sys
import types
import typing
import weakref
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from concepts.errors import ConceptsError, ModelError, UsageError

log = logging.getLogger(__name__)

#: Mean and std (0-255 scale) of each named preprocessing.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    # NetDissect-Lite subtracts its BGR mean and divides by 255 * 0.224 for every channel.
    "netdissect": ((124.6901, 118.6897, 109.5388), (57.12, 57.12, 57.12)),
    "none": None,
}

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")

#: PIL's resampling numbers (what Hugging Face image-processor configs store as ``resample``).
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
#: Model names that are not Python factories: libraries and in-memory models.
_PREFIXES = ("timm:", "hf:", "hf-backbone:", "memory:")
#: Hugging Face model types whose position embeddings fix the input size (besides those whose
#: forward takes ``interpolate_pos_encoding``, which is off by default).
_HF_FIXED = {"vit", "deit", "vit_msn", "vit_mae", "ijepa", "clip_vision_model", "siglip_vision_model", "beit", "data2vec-vision"}


@dataclass
class OwnPreprocess:
    """A model's own preprocessing as its weights or library state it (mean and std on the 0-1 scale)."""

    source: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    pipeline: dict[str, Any] = field(default_factory=dict)  # the rest of its pipeline, as stated (resize, crop)


@dataclass
class LoadedModel:
    """A model ready for dissection, what identifies its weights, and its own preprocessing."""

    module: nn.Module
    name: str
    weights: str
    weights_hash: str
    own: OwnPreprocess | None = None


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Parse ``auto|imagenet|netdissect|none`` or ``m1,m2,m3/s1,s2,s3`` into 0-255 scale mean and std.

    Custom values with every number at most 1 are read on the 0-1 scale (as torchvision's
    ``Normalize`` takes them), otherwise on the 0-255 scale.
    """
    if text == "auto":
        # The model's own mean and std are found once the model is loaded (resolve_preprocess);
        # without any, auto means ImageNet's.
        return NORMALIZATIONS["imagenet"]
    if text in NORMALIZATIONS:
        return NORMALIZATIONS[text]
    try:
        mean_s, std_s = text.split("/")
        mean = tuple(float(v) for v in mean_s.split(","))
        std = tuple(float(v) for v in std_s.split(","))
    except ValueError:
        raise UsageError(f"--normalize {text!r}: expected auto, imagenet, netdissect, none or m1,m2,m3/s1,s2,s3") from None
    if len(mean) != 3 or len(std) != 3:
        raise UsageError(f"--normalize {text!r}: need three means and three stds")
    # A NaN or zero std would surface much later as "activations changed between passes".
    if not all(math.isfinite(v) for v in mean + std):
        raise UsageError(f"--normalize {text!r}: every mean and std must be a finite number")
    if min(std) <= 0:
        raise UsageError(f"--normalize {text!r}: every std must be positive")
    if max(mean + std) <= 1.0:
        mean, std = tuple(m * 255 for m in mean), tuple(s * 255 for s in std)
    return mean, std


def parse_device(text: str) -> torch.device:
    """A ``--device`` value as a torch device, refusing what this machine cannot run."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text}: only cpu and cuda are supported")
    return device


def file_hash(path: Path) -> str:
    """SHA-256 (first 16 hex digits) of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict in a checkpoint and strip DataParallel's ``module.`` prefix."""
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state(obj[key], path)
        raise ModelError(f"checkpoint holds no state dict (keys: {', '.join(map(str, list(obj)[:10]))})", path=path)
    if not isinstance(obj, Mapping):
        raise ModelError(f"checkpoint holds a {type(obj).__name__}, not a state dict or model", path=path)
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    """Class count from the final layer: the last 2-D ``weight`` of the state dict."""
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else None


def is_factory(model: Any) -> bool:
    """Whether ``model`` names Python code to import (``package.module:factory``), not a library model or a torchvision name."""
    return isinstance(model, str) and ":" in model and not model.startswith(_PREFIXES)


def _optional(package: str, extra: str) -> Any:
    """Import an optional package, or say in one line which extra installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ModelError(f"{package} is not installed", hint=f"pip install 'concept-dissection[{extra}]'") from None


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Forbid Hugging Face hub downloads in the block when ``offline`` (no ``--pretrained``)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _signature(fn: Any) -> inspect.Signature | None:
    for kwargs in ({"eval_str": True}, {}):
        try:
            return inspect.signature(fn, **kwargs)
        except (NameError, TypeError, ValueError, SyntaxError):
            continue
    return None


_SCALARS = {"bool": bool, "int": int, "float": float, "str": str, "None": type(None)}


def _scalar_types(annotation: Any) -> list[type] | None:
    """The plain types an annotation allows (``int``, ``float | None``, ``Optional[str]``), or None when it is something else."""
    if isinstance(annotation, str):  # postponed annotations that could not be evaluated
        names = [n.strip() for n in re.sub(r"^Optional\[(.*)\]$", r"\1 | None", annotation.strip()).split("|")]
        return [_SCALARS[n] for n in names] if all(n in _SCALARS for n in names) else None
    if annotation in (bool, int, float, str):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return list(args) if all(a in (bool, int, float, str, type(None)) for a in args) else None
    return None


def _convert(text: str, param: inspect.Parameter | None, key: str, what: str) -> Any:
    """One ``--model-arg`` value, typed from the parameter's annotation or default; a Python literal otherwise."""
    allowed = None
    if param is not None:
        allowed = _scalar_types(param.annotation) if param.annotation is not inspect.Parameter.empty else None
        if allowed is None and param.default not in (inspect.Parameter.empty, None) and type(param.default) in (bool, int, float, str):
            allowed = [type(param.default)]
    if allowed is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
    if type(None) in allowed and text in ("None", "none", "null"):
        return None
    for t in sorted((t for t in allowed if t is not type(None)), key=[bool, int, float, str].index):
        if t is bool:
            low = text.lower()
            if low in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return low in ("true", "yes", "on", "1")
        elif t is str:
            return text
        else:
            try:
                return t(text)
            except ValueError:
                continue
    names = " or ".join(t.__name__ for t in allowed)
    raise UsageError(f"--model-arg {key}={text}: {what} takes {names} for {key}")


def typed_args(fn: Any, args: Mapping[str, str], what: str) -> dict[str, Any]:
    """``--model-arg`` values typed from ``fn``'s signature; an unknown key is refused listing its parameters."""
    sig = _signature(fn)
    if sig is None:
        return {k: _convert(v, None, k, what) for k, v in args.items()}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = {n: p for n, p in sig.parameters.items() if p.kind in kinds}
    open_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    out = {}
    for key, text in args.items():
        if key not in params and not open_kw:
            raise UsageError(f"--model-arg {key}: {what} has no parameter {key!r}; its parameters: {', '.join(params) or 'none'}")
        out[key] = _convert(text, params.get(key), key, what)
    return out


def parse_model_args(values: Any) -> dict[str, str]:
    """``KEY=VALUE`` strings (or a mapping) as a dict of strings, refusing malformed ones."""
    if not values:
        return {}
    if isinstance(values, Mapping):
        return {str(k): v if isinstance(v, str) else repr(v) for k, v in values.items()}
    out: dict[str, str] = {}
    for v in values:
        key, sep, text = str(v).partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"--model-arg {v!r}: expected KEY=VALUE with KEY a parameter name")
        if key.strip() in out:
            raise UsageError(f"--model-arg {key.strip()} is given twice")
        out[key.strip()] = text
    return out


def _build(model: str, num_classes: int | None, pretrained: bool, model_args: Mapping[str, str] | None = None) -> tuple[nn.Module, OwnPreprocess | None]:
    """Instantiate an architecture by torchvision name, ``timm:NAME`` or ``package.module:factory``."""
    torch.manual_seed(0)  # random initial weights are then the same in every run
    model_args = dict(model_args or {})
    if model.startswith("timm:"):
        return _timm(model[len("timm:"):], num_classes, pretrained, model_args)
    if is_factory(model):
        mod_name, _, attr = model.partition(":")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` would, so local modules resolve
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ModelError(f"cannot import model factory {model!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed while importing: say so, in one line
            raise ModelError(f"importing model factory {model!r} failed: {_what(e)}") from None
        if not callable(factory):
            raise ModelError(f"{model!r} is a {type(factory).__name__}, not a function building the model")
        kwargs = typed_args(factory, model_args, f"the factory {model}")
        sig = _signature(factory)
        named = sig.parameters if sig is not None else {}
        if pretrained:
            if "pretrained" not in named:
                raise UsageError(f"--pretrained: the factory {model} has no 'pretrained' parameter, so it cannot be asked for published weights", hint="load its weights with --weights FILE")
            if "pretrained" in kwargs:
                raise UsageError("give --pretrained or --model-arg pretrained=..., not both")
            kwargs["pretrained"] = True
        if num_classes is not None and "num_classes" in named and "num_classes" not in kwargs:
            kwargs["num_classes"] = num_classes
        try:
            built = factory(**kwargs)
        except ConceptsError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the user's factory raises is one line naming it
            raise ModelError(f"model factory {model!r} raised {_what(e)}") from None
        if not isinstance(built, nn.Module):
            raise ModelError(f"{model!r} returned a {type(built).__name__}, not a torch.nn.Module")
        return built, None
    import torchvision

    if model_args:
        raise UsageError(f"--model-arg is for timm: models and package.module:factory; {model} takes none")
    names = torchvision.models.list_models()
    if model not in names:
        import difflib

        close = difflib.get_close_matches(model, names, n=5)
        raise ModelError(f"unknown model {model!r}", hint=f"did you mean {', '.join(close)}?" if close else "use a torchvision name such as resnet18, timm:NAME, hf:OWNER/NAME or package.module:factory")
    if pretrained:
        try:
            weights = torchvision.models.get_model_weights(model).DEFAULT
            built = torchvision.models.get_model(model, weights=weights)
        except Exception as e:  # noqa: BLE001 - any download failure means the same thing to the user
            raise ModelError(
                f"cannot get the published weights of {model} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                hint="offline? download them elsewhere and pass --weights FILE",
            ) from None
        return built, _torchvision_own(model, weights)
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    # Segmentation and detection builders fetch backbone weights by default: without --pretrained
    # nothing is downloaded, so they get none.
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(model)).parameters:
        kwargs["weights_backbone"] = None
    try:
        return torchvision.models.get_model(model, weights=None, **kwargs), None
    except TypeError as e:
        raise ModelError(f"cannot build {model}: {e}") from None


def _interp_name(value: Any) -> str | None:
    """An interpolation as a PIL filter name, from a PIL number, an enum (PIL or torchvision) or a name."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return _PIL_RESAMPLE.get(int(value))
    raw = getattr(value, "value", value)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _PIL_RESAMPLE.get(int(raw))
    name = str(raw).lower()
    return name if name in _PIL_RESAMPLE.values() else None


def _floats(values: Any) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        values = [values] * 3
    out = tuple(float(v) for v in values)
    return out if len(out) == 3 else None


def _torchvision_own(model: str, weights: Any) -> OwnPreprocess:
    t = weights.transforms()
    return OwnPreprocess(
        f"torchvision weights {model}.{weights.name}", _floats(getattr(t, "mean", None)), _floats(getattr(t, "std", None)),
        _interp_name(getattr(t, "interpolation", None)),
        {"resize_size": list(getattr(t, "resize_size", []) or []), "crop_size": list(getattr(t, "crop_size", []) or [])},
    )


def _timm(name: str, num_classes: int | None, pretrained: bool, model_args: dict[str, str]) -> tuple[nn.Module, OwnPreprocess]:
    """A timm model: weights only with ``pretrained``; preprocessing from timm's data config."""
    timm = _optional("timm", "timm")
    hub = name.startswith(("hf-hub:", "hf_hub:"))
    if not hub and not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ModelError(f"unknown timm model {name!r}", hint=f"did you mean {', '.join(close)}?" if close else "see timm.list_models()")
    reserved = sorted(set(model_args) & {"model_name", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"})
    if reserved:
        # Weights come only through --pretrained or --weights (read without unpickling), never through timm's own loaders.
        raise UsageError(f"--model-arg {reserved[0]}: not for timm:{name}; use --pretrained or --weights FILE")
    kwargs = typed_args(timm.create_model, model_args, f"timm model {name}")
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    try:
        with hub_offline(not pretrained):
            module = timm.create_model(name, pretrained=pretrained, **kwargs)
    except ConceptsError:
        raise
    except Exception as e:  # noqa: BLE001 - download and build failures are one line naming the model
        if pretrained:
            raise ModelError(f"cannot get the published weights of timm:{name} ({_what(e)})", hint="offline? download them elsewhere and pass --weights FILE") from None
        raise ModelError(f"cannot build timm:{name} ({_what(e)})", hint="its config is fetched from the hub: pass --pretrained" if hub else None) from None
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    pipeline = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in ("input_size", "crop_pct", "crop_mode")}
    return module, OwnPreprocess(f"timm data config of {name}", _floats(cfg.get("mean")), _floats(cfg.get("std")), _interp_name(cfg.get("interpolation")), pipeline)


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")


def _hf(spec: str, pretrained: bool, backbone: bool) -> tuple[nn.Module, OwnPreprocess | None, str]:
    """A transformers vision model from a local folder or the hub cache (downloads only with ``pretrained``); never remote code."""
    prefix = "hf-backbone:" if backbone else "hf:"
    folder = Path(spec).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelError("has no config.json: not a folder written by save_pretrained", path=folder)
        source = str(folder.resolve())
    elif _REPO_ID.fullmatch(spec) and not spec.startswith((".", "/")):
        source = spec
    else:
        raise ModelError(f"{prefix}{spec}: neither a folder nor a Hugging Face repo id OWNER/NAME")
    transformers = _optional("transformers", "hf")
    cls = transformers.AutoBackbone if backbone else transformers.AutoModel
    local = not pretrained
    with hub_offline(local):
        try:
            module = cls.from_pretrained(source, trust_remote_code=False, local_files_only=local, use_safetensors=True)
        except Exception as e:  # noqa: BLE001 - every loading failure is one line naming the model
            if local and source == spec:
                raise ModelError(f"{prefix}{spec} is not in the Hugging Face cache ({_what(e)})", hint="pass --pretrained to download it, or check the path if it is a folder") from None
            if pretrained and source == spec:
                raise ModelError(f"cannot fetch {prefix}{spec} from the Hugging Face hub ({_what(e)})", hint="offline? download it elsewhere and pass its folder as hf:PATH") from None
            raise ModelError(f"cannot load {prefix}{spec} ({_what(e)})") from None
        try:
            proc = transformers.AutoImageProcessor.from_pretrained(source, trust_remote_code=False, local_files_only=local)
        except Exception as e:  # noqa: BLE001 - no image-processor config: the default preprocessing applies, and the log says so
            log.info("%s%s has no usable image-processor config (%s)", prefix, spec, _what(e))
            proc = None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{prefix}{spec} loaded a {type(module).__name__}, not a torch.nn.Module")
    return module, _hf_own(f"{prefix}{spec}", proc), source


def _hf_own(name: str, proc: Any) -> OwnPreprocess | None:
    """Mean, std and resampling of an image processor on the 0-1 scale (rescale and normalize steps folded in)."""
    if proc is None or getattr(proc, "image_mean", None) is None:
        return None
    factor = float(getattr(proc, "rescale_factor", 1 / 255) or 1 / 255) if getattr(proc, "do_rescale", True) else 1.0
    if getattr(proc, "do_normalize", True):
        mean, std = _floats(proc.image_mean), _floats(proc.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if mean is None or std is None:
        return None
    # x = (RGB * factor - mean) / std; on the 0-1 scale that is (RGB / 255 - mean / (255 factor)) / (std / (255 factor)).
    k = 255.0 * factor
    size = getattr(proc, "size", None)
    size = {k2: v for k2, v in dict(size).items() if v is not None} if size is not None else None
    return OwnPreprocess(
        f"image-processor config of {name}", tuple(m / k for m in mean), tuple(s / k for s in std),
        _interp_name(getattr(proc, "resample", None)), {"size": size, "do_resize": getattr(proc, "do_resize", None)},
    )


def fixed_input_size(module: nn.Module) -> tuple[int, int] | None:
    """The input size a model requires, when it requires one (position embeddings of a given grid), else None."""
    try:
        from torchvision.models import VisionTransformer

        if isinstance(module, VisionTransformer):
            return (int(module.image_size), int(module.image_size))
    except ImportError:
        pass
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("fixed_input_size") and not getattr(module, "dynamic_img_size", False):
        size = cfg.get("input_size")
        if size and len(size) == 3:
            return (int(size[1]), int(size[2]))
    config = getattr(module, "config", None)
    image_size = getattr(config, "image_size", None)
    if image_size is not None and hasattr(config, "model_type"):
        sig = _signature(module.forward)
        takes = sig is not None and "interpolate_pos_encoding" in sig.parameters
        if takes or config.model_type in _HF_FIXED:
            if isinstance(image_size, int):
                return (image_size, image_size)
            if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
                return (int(image_size[0]), int(image_size[1]))
    return None


def state_hash(module: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a module's state dict: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


#: Models dissected from Python in this process, by their ``memory:`` name, so a report can redraw their masks.
_IN_MEMORY: dict[str, weakref.ref] = {}


def memory_name(module: nn.Module, digest: str) -> str:
    """The name run.json gives a model passed as an object: ``memory:``, its class and its state's hash."""
    cls = type(module)
    return f"memory:{cls.__module__}.{cls.__qualname__}@{digest}"


def _in_memory(module: nn.Module) -> LoadedModel:
    digest = state_hash(module)
    name = memory_name(module, digest)
    for key in [k for k, ref in _IN_MEMORY.items() if ref() is None]:
        del _IN_MEMORY[key]
    _IN_MEMORY[name] = weakref.ref(module)
    return LoadedModel(module, name, "in-memory", digest, _own_of(module))


def _own_of(module: nn.Module) -> OwnPreprocess | None:
    """The preprocessing a timm model built elsewhere states about itself (other in-memory models state none)."""
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and "mean" in cfg and "std" in cfg:
        return OwnPreprocess(f"pretrained_cfg of {type(module).__name__}", _floats(cfg.get("mean")), _floats(cfg.get("std")), _interp_name(cfg.get("interpolation")))
    return None


def _what(e: BaseException) -> str:
    """An exception as ``Type: first line of its message``."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _fit(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load a state dict strictly, turning mismatches into one readable line."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) e.g. {'; '.join(shapes[:2])}")
        raise ModelError(f"checkpoint does not fit the model: {'; '.join(parts)}", path=path)
    module.load_state_dict(state, strict=True)


def _is_safetensors(path: Path) -> bool:
    """Whether a file is named or starts as safetensors files do (an 8-byte little-endian header length, then a JSON object)."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < path.stat().st_size


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError("is a safetensors file and safetensors is not installed", path=path, hint="pip install 'concept-dissection[hf]'") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read safetensors file: {_what(e)}", path=path) from None


def _args_tag(tag: str, model_args: Mapping[str, str]) -> str:
    """A weights tag that tells models built with other ``--model-arg`` values apart."""
    if not model_args:
        return tag
    return f"{tag}:{hashlib.sha256(repr(sorted(model_args.items())).encode()).hexdigest()[:8]}"


def load_model(
    model: str | nn.Module | None, weights: Path | None = None, *, pretrained: bool = False, trust_pickle: bool = False,
    trust_code: bool = True, model_args: Any = None,
) -> LoadedModel:
    """Build the model in eval mode from an architecture (or take a model object) and optional checkpoint.

    ``trust_pickle`` and ``trust_code`` are consent the user gave on the command line: a whole
    pickled model is unpickled, and a ``package.module:factory`` imported, only with it.
    ``model_args`` (``KEY=VALUE`` strings or a mapping) go to a factory or ``timm.create_model``.
    """
    model_args = parse_model_args(model_args)
    if isinstance(model, nn.Module):
        for given, what in ((weights is not None, "weights"), (pretrained, "pretrained"), (bool(model_args), "model_args")):
            if given:
                raise UsageError(f"{what}= with a model object: prepare the object itself (load_state_dict, constructor arguments) and pass it alone")
        loaded = _in_memory(model)
        loaded.module.eval()
        return loaded
    if model is not None and not isinstance(model, str):
        raise UsageError(f"model must be a name (resnet18, timm:NAME, hf:OWNER/NAME, package.module:factory) or a torch.nn.Module, not a {type(model).__name__}")
    if model is not None and model.startswith("memory:"):
        ref = _IN_MEMORY.get(model)
        obj = ref() if ref is not None else None
        if obj is None:
            raise ModelError(f"{model} was a model object in a Python session; it cannot be rebuilt from its name", hint="dissect it again from Python with concepts.dissect.dissect")
        return load_model(obj)
    if model is not None and model.startswith(("hf:", "hf-backbone:")):
        if weights is not None:
            raise UsageError("--weights with an hf: model: a Hugging Face model carries its weights; pass its save_pretrained folder as hf:PATH")
        if model_args:
            raise UsageError(f"--model-arg is for timm: models and package.module:factory; {model} takes none")
        backbone = model.startswith("hf-backbone:")
        module, own, source = _hf(model.partition(":")[2], pretrained, backbone)
        return LoadedModel(module.eval(), model, source, state_hash(module), own)
    if is_factory(model) and not trust_code:
        raise ModelError(f"the model factory {model} would be imported, which runs its code; it needs the user's consent")
    if weights is None:
        if model is None:
            raise UsageError("--model is required (a torchvision name such as resnet18, timm:NAME, hf:OWNER/NAME or package.module:factory)")
        module, own = _build(model, None, pretrained, model_args)
        if is_factory(model):
            log.info("no --weights: using %s as its factory built it", model)
            tag = "pretrained" if pretrained else "factory"
        else:
            if not pretrained:
                log.warning("no --weights or --pretrained: %s has random weights, so results describe an untrained network", model)
            tag = "pretrained" if pretrained else "random"
        tag = _args_tag(tag, model_args)
        return LoadedModel(module.eval(), model, tag, tag, own)
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError("weights file not found", path=weights)
    if pretrained:
        raise UsageError("give either --weights or --pretrained, not both")
    digest = file_hash(weights)
    if _is_safetensors(weights):
        state = _load_safetensors(weights)
    elif _is_torchscript(weights):
        if not trust_code:
            # Loading a TorchScript archive compiles and runs its code (its __setstate__ methods).
            raise ModelError("is a TorchScript archive; loading it runs its code and needs the user's consent", path=weights, hint="pass --trust-model-code to allow it")
        try:
            scripted = torch.jit.load(str(weights), map_location="cpu")
        except RuntimeError as e:
            raise ModelError(f"cannot load TorchScript file: {str(e).splitlines()[0]}", path=weights) from None
        if model is None:
            raise UsageError("a TorchScript file needs --model naming its architecture (its layers cannot be hooked when scripted)")
        state = dict(scripted.state_dict())
    else:
        try:
            obj = torch.load(weights, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as e:
            first = str(e).splitlines()[0] if str(e) else "unpickling refused"
            raise ModelError(f"not a plain state dict ({first[:120]})", path=weights, hint="if you trust this file, pass --trust-pickle to load a whole pickled model") from None
        except (RuntimeError, EOFError, ValueError, OSError) as e:
            raise ModelError(f"cannot read checkpoint: {str(e).splitlines()[0] if str(e) else type(e).__name__}", path=weights) from None
        if isinstance(obj, nn.Module):
            if model is not None:
                state = dict(obj.state_dict())
            else:
                return LoadedModel(obj.eval(), type(obj).__name__, str(weights), digest)
        else:
            state = _unwrap_state(obj, weights)
    if model is None:
        raise UsageError("--model is required with a state-dict checkpoint")
    module, own = _build(model, _num_classes(state), False, model_args)
    _fit(module, state, weights)
    return LoadedModel(module.eval(), model, str(weights), _args_tag(digest, model_args), own)


def own_from(preprocess: Any) -> OwnPreprocess:
    """A ``preprocess=`` argument as the model's own preprocessing.

    Accepts ``weights.transforms()`` (torchvision), a timm data config dict, a transformers
    image processor, or a ``(mean, std)`` pair (0-1 or 0-255 scale, as ``--normalize`` reads them).
    """
    if isinstance(preprocess, (tuple, list)) and len(preprocess) == 2:
        try:
            mean, std = parse_normalize(",".join(map(str, preprocess[0])) + "/" + ",".join(map(str, preprocess[1])))
        except (TypeError, UsageError) as e:
            raise UsageError(f"preprocess={preprocess!r}: expected (mean, std) with three numbers each ({e})") from None
        return OwnPreprocess("preprocess= (mean, std)", tuple(m / 255 for m in mean), tuple(s / 255 for s in std))
    if isinstance(preprocess, Mapping) and "mean" in preprocess and "std" in preprocess:
        got = OwnPreprocess("preprocess= data config", _floats(preprocess["mean"]), _floats(preprocess["std"]), _interp_name(preprocess.get("interpolation")))
    elif hasattr(preprocess, "image_mean") and hasattr(preprocess, "image_std"):
        got = _hf_own(f"preprocess= {type(preprocess).__name__}", preprocess) or OwnPreprocess("preprocess=")
    elif hasattr(preprocess, "mean") and hasattr(preprocess, "std"):
        got = OwnPreprocess(f"preprocess= {type(preprocess).__name__}", _floats(preprocess.mean), _floats(preprocess.std), _interp_name(getattr(preprocess, "interpolation", None)))
    else:
        raise UsageError(f"preprocess= takes weights.transforms(), a timm data config, an image processor or a (mean, std) pair, not a {type(preprocess).__name__}")
    if got.mean is None or got.std is None:
        raise UsageError(f"preprocess= {type(preprocess).__name__}: needs three means and three stds")
    return got


def _normalize_text(mean255: tuple[float, ...], std255: tuple[float, ...]) -> str:
    """Mean and std as ``--normalize`` text that parses back to exactly these values (a name where one fits)."""
    for name, value in NORMALIZATIONS.items():
        if value == (mean255, std255):
            return name
    for scale in (255.0, 1.0):
        text = ",".join(repr(m / scale) for m in mean255) + "/" + ",".join(repr(s / scale) for s in std255)
        try:
            if parse_normalize(text) == (mean255, std255):
                return text
        except UsageError:
            pass
    return ",".join(map(repr, mean255)) + "/" + ",".join(map(repr, std255))


def resolve_preprocess(normalize: str, loaded: LoadedModel, image_size: tuple[int, int], preprocess: Any = None) -> tuple[Any, str, dict[str, Any]]:
    """What every image goes through: ``(ImagePrep, --normalize text for the run's params, record for run.json)``.

    Never a crop (labels stay aligned with the image). Mean and std: ``normalize`` when it names
    them, else (``auto``) the model's own, else ImageNet's. The whole image is resized to the
    model's input size only when the model requires a fixed size, with its own interpolation.
    """
    from concepts.dissect.data import ImagePrep

    own = own_from(preprocess) if preprocess is not None else loaded.own
    if preprocess is not None and normalize != "auto":
        raise UsageError(f"give preprocess= or normalize={normalize!r}, not both")
    if normalize == "auto":
        if own is not None and own.mean is not None and own.std is not None:
            mean_std = (tuple(m * 255 for m in own.mean), tuple(s * 255 for s in own.std))
            text, source = _normalize_text(*mean_std), own.source
        else:
            mean_std, text, source = NORMALIZATIONS["imagenet"], "imagenet", "imagenet (the model states no mean and std)"
    else:
        mean_std, text, source = parse_normalize(normalize), normalize, f"--normalize {normalize}"
    required = fixed_input_size(loaded.module)
    resize = required if required is not None and tuple(required) != tuple(image_size) else None
    interpolation = (own.interpolation if own is not None else None) or "bilinear"
    prep = ImagePrep(mean_std, resize, interpolation)
    record = {
        "normalize": text,
        "mean": [m / 255 for m in mean_std[0]] if mean_std else None,
        "std": [s / 255 for s in mean_std[1]] if mean_std else None,
        "scale": "mean and std on the 0-1 scale: x = (RGB / 255 - mean) / std",
        "mean_std_from": source,
        "image_size": list(image_size),
        "model_input_size": list(required) if required else None,
        "resize": list(resize) if resize else None,
        "interpolation": interpolation if resize else None,
        "crop": None,
        "own": None if own is None else {"source": own.source, "mean": list(own.mean) if own.mean else None, "std": list(own.std) if own.std else None, "interpolation": own.interpolation, **own.pipeline},
    }
    return prep, text, record
