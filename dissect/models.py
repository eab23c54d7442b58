"""Build the model to dissect: torchvision names or ``package.module:factory``, plus checkpoints."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import math
import os
import pickle
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from concepts.errors import ModelError, UsageError

log = logging.getLogger(__name__)

#: Mean and std (0-255 scale) of each named preprocessing.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    # NetDissect-Lite subtracts its BGR mean and divides by 255 * 0.224 for every channel.
    "netdissect": ((124.6901, 118.6897, 109.5388), (57.12, 57.12, 57.12)),
    "none": None,
}

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class LoadedModel:
    """A model ready for dissection and what identifies its weights."""

    module: nn.Module
    name: str
    weights: str
    weights_hash: str


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Parse ``imagenet|netdissect|none`` or ``m1,m2,m3/s1,s2,s3`` into 0-255 scale mean and std.

    Custom values with every number at most 1 are read on the 0-1 scale (as torchvision's
    ``Normalize`` takes them), otherwise on the 0-255 scale.
    """
    if text in NORMALIZATIONS:
        return NORMALIZATIONS[text]
    try:
        mean_s, std_s = text.split("/")
        mean = tuple(float(v) for v in mean_s.split(","))
        std = tuple(float(v) for v in std_s.split(","))
    except ValueError:
        raise UsageError(f"--normalize {text!r}: expected imagenet, netdissect, none or m1,m2,m3/s1,s2,s3") from None
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


def is_factory(model: str | None) -> bool:
    """Whether ``model`` names Python code to import (``package.module:factory``), not a torchvision name."""
    return bool(model) and ":" in model


def _build(model: str, num_classes: int | None, pretrained: bool) -> nn.Module:
    """Instantiate an architecture by torchvision name or ``package.module:factory``."""
    torch.manual_seed(0)  # random initial weights are then the same in every run
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
        kwargs = {}
        if num_classes is not None:
            try:
                if "num_classes" in inspect.signature(factory).parameters:
                    kwargs["num_classes"] = num_classes
            except (TypeError, ValueError):
                pass
        try:
            built = factory(**kwargs)
        except Exception as e:  # noqa: BLE001 - whatever the user's factory raises is one line naming it
            raise ModelError(f"model factory {model!r} raised {_what(e)}") from None
        if not isinstance(built, nn.Module):
            raise ModelError(f"{model!r} returned a {type(built).__name__}, not a torch.nn.Module")
        return built
    import torchvision

    names = torchvision.models.list_models()
    if model not in names:
        import difflib

        close = difflib.get_close_matches(model, names, n=5)
        raise ModelError(f"unknown model {model!r}", hint=f"did you mean {', '.join(close)}?" if close else "use a torchvision name such as resnet18, or package.module:factory")
    if pretrained:
        try:
            return torchvision.models.get_model(model, weights="DEFAULT")
        except Exception as e:  # noqa: BLE001 - any download failure means the same thing to the user
            raise ModelError(
                f"cannot get the published weights of {model} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                hint="offline? download them elsewhere and pass --weights FILE",
            ) from None
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    # Segmentation and detection builders fetch backbone weights by default: without --pretrained
    # nothing is downloaded, so they get none.
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(model)).parameters:
        kwargs["weights_backbone"] = None
    try:
        return torchvision.models.get_model(model, weights=None, **kwargs)
    except TypeError as e:
        raise ModelError(f"cannot build {model}: {e}") from None


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


def load_model(model: str | None, weights: Path | None = None, *, pretrained: bool = False, trust_pickle: bool = False, trust_code: bool = True) -> LoadedModel:
    """Build the model in eval mode from an architecture and optional checkpoint.

    ``trust_pickle`` and ``trust_code`` are consent the user gave on the command line: a whole
    pickled model is unpickled, and a ``package.module:factory`` imported, only with it.
    """
    if is_factory(model) and not trust_code:
        raise ModelError(f"the model factory {model} would be imported, which runs its code; it needs the user's consent")
    if weights is None:
        if model is None:
            raise UsageError("--model is required (a torchvision name such as resnet18, or package.module:factory)")
        module = _build(model, None, pretrained)
        if is_factory(model):
            log.info("no --weights: using %s as its factory built it", model)
            tag = "factory"
        else:
            if not pretrained:
                log.warning("no --weights or --pretrained: %s has random weights, so results describe an untrained network", model)
            tag = "pretrained" if pretrained else "random"
        return LoadedModel(module.eval(), model, tag, tag)
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError("weights file not found", path=weights)
    if pretrained:
        raise UsageError("give either --weights or --pretrained, not both")
    digest = file_hash(weights)
    if _is_torchscript(weights):
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
    module = _build(model, _num_classes(state), False)
    _fit(module, state, weights)
    return LoadedModel(module.eval(), model, str(weights), digest)
