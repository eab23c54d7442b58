"""Scoped forward hooks that capture named layers' outputs in one forward pass."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from concepts.errors import ModelError


class _Enough(Exception):
    """Raised inside the forward pass once every hooked layer has produced its output."""


def check_layers(model: nn.Module, names: Sequence[str]) -> None:
    """Refuse layer names the model does not have, listing the available ones."""
    available = [n for n, _ in model.named_modules() if n]
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            from concepts.listing import shorten

            raise ModelError(f"no layer {name!r} in the model; {hint}available: {shorten(available)}")


class Capture:
    """Runs the model and returns the captured ``N x U x h x w`` outputs by layer name."""

    def __init__(self, model: nn.Module, names: Sequence[str], store: dict[str, torch.Tensor], stop_early: bool) -> None:
        self.model = model
        self.names = list(names)
        self.store = store
        self.stop_early = stop_early

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``x`` (stopping after the last hooked layer) and return each layer's output."""
        self.store.clear()
        try:
            with torch.inference_mode():
                self.model(x)
        except _Enough:
            pass
        missing = [n for n in self.names if n not in self.store]
        if missing:
            raise ModelError(f"layer(s) {', '.join(missing)} captured nothing in a forward pass (module never called?)")
        out = dict(self.store)
        self.store.clear()
        for name, t in out.items():
            if t.ndim != 4:
                raise ModelError(f"layer {name!r} outputs shape {tuple(t.shape)}; dissection needs N x units x h x w feature maps")
            if t.shape[2] * t.shape[3] < 2:
                raise ModelError(f"layer {name!r} outputs {t.shape[2]}x{t.shape[3]} maps; dissection needs spatial size above 1x1")
        return out


@contextmanager
def capture(model: nn.Module, names: Sequence[str], *, stop_early: bool = True, layout: str | None = None, output: str | None = None) -> Iterator[Capture]:
    """Hook ``names`` for the duration of the block; handles are always removed on exit."""
    check_layers(model, names)
    modules = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    wanted = set(names)

    def make(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if name in store:
                return  # a module called twice keeps its first output
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"layer {name!r} outputs a {type(output).__name__}, not a tensor")
            done = stop_early and wanted.issubset(store.keys() | {name})
            # A later in-place module (ReLU(inplace=True)) would overwrite a kept reference; the
            # last layer needed ends the forward pass, so only it can be kept without a copy.
            store[name] = output.detach() if done else output.detach().clone()
            if done:
                raise _Enough

        return hook

    handles = []
    try:
        for name in dict.fromkeys(names):
            handles.append(modules[name].register_forward_hook(make(name)))
        yield Capture(model, names, store, stop_early)
    finally:
        for h in handles:
            h.remove()
        store.clear()
