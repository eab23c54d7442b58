"""Scoped capture of named layers' outputs in one forward pass, as ``N x units x h x w`` maps.

A layer is named by

- a module name, as ``named_modules()`` gives it (``layer4``, ``features.28``);
- a module name and the call to take, 1-based, for a module run more than once per forward pass
  (``layer4.1.relu:2``, the ReLU after the residual addition in a ResNet block). Such a module named
  without the call is refused with the list of its calls, never captured at its first call silently;
- a functional node of torchvision's feature extraction (``layer4.1.add``), where the model traces with
  torch.fx (``torchvision.models.feature_extraction.get_graph_node_names``).

Units are channels; how each output holds them is :mod:`concepts.dissect.layouts`'s business.
"""

from __future__ import annotations

import difflib
import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from concepts.dissect.layouts import Known, Layout, layout_of, parse_layout, pick_output, to_units
from concepts.errors import ModelError

_NODES: weakref.WeakKeyDictionary[nn.Module, tuple[list[str], str | None]] = weakref.WeakKeyDictionary()


class _Enough(Exception):
    """Raised inside the forward pass once every hooked layer has produced its output."""


@dataclass(frozen=True)
class Target:
    """One requested layer: a module (and which call of it) or a functional graph node."""

    name: str
    module: str | None = None
    call: int | None = None  # 1-based; None: the module must run exactly once
    node: str | None = None


def graph_nodes(model: nn.Module) -> tuple[list[str], str | None]:
    """Eval-mode node names of the model's torch.fx graph, or ``[]`` and why it does not trace."""
    if model in _NODES:
        return _NODES[model]
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        _, nodes = get_graph_node_names(model)
        got: tuple[list[str], str | None] = (list(nodes), None)
    except Exception as e:  # noqa: BLE001 - any tracing failure means only module names can be used
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        got = ([], f"{type(e).__name__}: {first[:160]}")
    _NODES[model] = got
    return got


def resolve(model: nn.Module, names: Sequence[str]) -> list[Target]:
    """Read each layer name as a module, ``module:K`` or a functional node; a wrong one is a ModelError."""
    modules = {n for n, _ in model.named_modules() if n}
    out = []
    for name in names:
        name = str(name)
        if name in modules:
            out.append(Target(name, module=name))
            continue
        m = re.fullmatch(r"(.+):(-?\d+)", name)
        if m and m.group(1) in modules:
            k = int(m.group(2))
            if k < 1:
                raise ModelError(f"layer {name!r}: calls are numbered from 1 ({m.group(1)}:1 is the first call)")
            out.append(Target(name, module=m.group(1), call=k))
            continue
        nodes, why = graph_nodes(model)
        if name in nodes:
            out.append(Target(name, node=name))
            continue
        raise ModelError(_unknown(model, name, sorted(modules), nodes, why))
    return out


def _unknown(model: nn.Module, name: str, modules: list[str], nodes: list[str], why: str | None) -> str:
    from concepts.listing import shorten

    base = name.rsplit(":", 1)[0] if re.search(r":-?\d+$", name) else name
    close = difflib.get_close_matches(base, list(dict.fromkeys(modules + nodes)), n=5, cutoff=0.6)
    text = f"no layer {name!r} in the model; "
    if close:
        text += f"did you mean {', '.join(close)}? "
    text += f"top-level modules: {shorten(n for n, _ in model.named_children())}"
    if why:
        text += f" (functional nodes cannot be named: the model does not trace with torch.fx, {why})"
    return text


def check_layers(model: nn.Module, names: Sequence[str]) -> None:
    """Refuse layer names the model does not have, listing close matches."""
    resolve(model, names)


def _shape_of(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return str(tuple(output.shape))
    return type(output).__name__


class Capture:
    """Runs the model and returns the captured ``N x U x h x w`` maps by layer name."""

    def __init__(self, model: nn.Module, targets: list[Target], known: dict[str, Known | None], layout: Layout | None, selector: str | None, stop_early: bool) -> None:
        self.model, self.targets, self.known = model, targets, known
        self.layout, self.selector, self.stop_early = layout, selector, stop_early
        self.store: dict[str, torch.Tensor] = {}
        self.calls: dict[str, list[str]] = {}  # module -> output shape of each call, in order
        self.probing = False
        self.probed = False
        self.graph: nn.Module | None = None  # the feature extractor, when functional nodes are named
        self.keys: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        """The captured layers' names."""
        return [t.name for t in self.targets]

    def hook(self, module_name: str, wants: list[Target]):
        """A forward hook for ``module_name``, keeping the output of each wanted call."""

        def fn(_module: nn.Module, _inputs: object, output: object) -> None:
            seen = self.calls.setdefault(module_name, [])
            seen.append(_shape_of(output) if self.probing else "")
            if self.probing:
                return
            for t in wants:
                if (t.call or 1) == len(seen):
                    self.store[t.name] = pick_output(output, t.name, self.selector).detach()
            if self.stop_early and len(self.store) == len(self.targets):
                raise _Enough
            # A later in-place module (ReLU(inplace=True)) would overwrite a kept reference; the last
            # layer needed ends the forward pass, so only it can be kept without a copy.
            for t in wants:
                if (t.call or 1) == len(seen):
                    self.store[t.name] = self.store[t.name].clone()

        return fn

    def _probe(self, x: torch.Tensor) -> None:
        """Run one image through the whole model, counting each hooked module's calls."""
        self.probing = True
        self.calls.clear()
        try:
            with torch.inference_mode():
                self.model(x[:1])
        finally:
            self.probing = False
        for t in self.targets:
            if t.module is None:
                continue
            shapes = self.calls.get(t.module, [])
            if not shapes:
                raise ModelError(f"layer {t.name!r} captured nothing in a forward pass (module never called?)")
            if t.call is None and len(shapes) > 1:
                listed = ", ".join(f"{t.module}:{i} {s}" for i, s in enumerate(shapes, 1))
                raise ModelError(f"layer {t.name!r} runs {len(shapes)} times in one forward pass; name the call to dissect: {listed}")
            if t.call is not None and t.call > len(shapes):
                raise ModelError(f"layer {t.name!r}: module {t.module} runs {len(shapes)} time{'s' if len(shapes) > 1 else ''} in one forward pass, so it has no call {t.call}")
        self.probed = True

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``x`` (stopping after the last hooked layer) and return each layer's maps."""
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.graph is not None:
            with torch.inference_mode():
                out = self.graph(x)
            raw = {}
            for t in self.targets:
                if self.keys[t.name] not in out:
                    raise ModelError(f"layer {t.name!r} is the same node of the traced graph as another layer asked for; dissect them in separate runs")
                raw[t.name] = pick_output(out[self.keys[t.name]], t.name, self.selector)
        else:
            if not self.probed:
                self._probe(x)
            self.store.clear()
            self.calls.clear()
            try:
                with torch.inference_mode():
                    self.model(x)
            except _Enough:
                pass
            missing = [t.name for t in self.targets if t.name not in self.store]
            if missing:
                raise ModelError(f"layer(s) {', '.join(missing)} captured nothing in a forward pass (module never called?)")
            raw = dict(self.store)
            self.store.clear()
        return {t.name: to_units(raw[t.name], t.name, int(x.shape[0]), hw, self.known[t.name], self.layout) for t in self.targets}


def _graph_capture(model: nn.Module, targets: list[Target]) -> tuple[nn.Module, dict[str, str]]:
    """A torchvision feature extractor returning every target, module targets as their graph nodes."""
    from torchvision.models.feature_extraction import create_feature_extractor

    nodes, _ = graph_nodes(model)
    keys, return_nodes = {}, {}
    for i, t in enumerate(targets):
        node = t.node
        if node is None:
            assert t.module is not None
            calls = [t.module] + [n for n in nodes if re.fullmatch(re.escape(t.module) + r"_\d+", n)]
            if t.call is None and len(calls) > 1:
                raise ModelError(f"layer {t.name!r} runs {len(calls)} times in one forward pass; name the call to dissect: {', '.join(f'{t.module}:{k}' for k in range(1, len(calls) + 1))}")
            k = t.call or 1
            node = t.module if k == 1 else f"{t.module}_{k - 1}"
            if k > 1 and node not in nodes:
                raise ModelError(f"layer {t.name!r}: module {t.module} runs {len(calls)} time{'s' if len(calls) > 1 else ''} in one forward pass, so it has no call {k}")
        keys[t.name] = return_nodes[node] = return_nodes.get(node, f"out{i}")
    try:
        graph = create_feature_extractor(model, return_nodes=return_nodes)
    except Exception as e:  # noqa: BLE001 - a failure to build the graph is one line naming it
        raise ModelError(f"cannot capture functional nodes of this model with torch.fx: {type(e).__name__}: {str(e).strip()[:160]}") from None
    # A later in-place op (ReLU(inplace=True) after a block's addition) would overwrite a returned
    # node's tensor before the pass ends: each returned value is copied where it is made.
    for g in {id(g): g for g in (getattr(graph, "train_graph", None), getattr(graph, "eval_graph", None), graph.graph) if g is not None}.values():
        out = next(n for n in g.nodes if n.op == "output")
        returned = out.args[0]
        copies = {}
        for key, node in returned.items():
            with g.inserting_after(node):
                copies[key] = g.call_function(torch.clone, (node,))
        out.args = ({k: copies[k] for k in returned},)
        g.lint()
    graph.graph = graph.graph  # recompile with the copies
    graph.train(model.training)
    return graph, keys


@contextmanager
def capture(model: nn.Module, names: Sequence[str], *, stop_early: bool = True, layout: str | None = None, output: str | None = None) -> Iterator[Capture]:
    """Capture ``names`` for the duration of the block; hooks are always removed on exit.

    ``layout`` is ``--layout`` (for layers whose layout the model does not state), ``output`` is
    ``--layer-output`` (which element of a tuple, dict or ModelOutput output to read).
    """
    given = parse_layout(layout)
    targets = list({t.name: t for t in resolve(model, list(dict.fromkeys(names)))}.values())
    known = {t.name: layout_of(model, t.node or t.module or "", functional=t.node is not None) for t in targets}
    selector = None if output is None else str(output)
    grab = Capture(model, targets, known, given, selector, stop_early)
    handles = []
    try:
        if any(t.node is not None for t in targets):
            grab.graph, grab.keys = _graph_capture(model, targets)
        else:
            modules = dict(model.named_modules())
            by_module: dict[str, list[Target]] = {}
            for t in targets:
                by_module.setdefault(t.module or "", []).append(t)
            for name, wants in by_module.items():
                handles.append(modules[name].register_forward_hook(grab.hook(name, wants)))
        yield grab
    finally:
        for h in handles:
            h.remove()
        grab.store.clear()
