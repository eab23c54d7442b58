"""Resuming ``concepts dissect``: an interrupted run continues from its saved state with identical results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from concepts.dissect.features import FeatureStore
from concepts.dissect.run import DissectConfig, dissect
from concepts.dissect.tally import Tally
from synth import toy_dataset

N, BS = 12, 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n=N)


# Models named `module:factory` (synth:red_unit_net, ...) resolve from the tests folder.
pytestmark = pytest.mark.usefixtures("in_tests_dir")


def _cfg(ds, out, **kw):
    args = dict(dataset=ds, layers=["pool", "conv"], out=out, model="synth:red_unit_net", normalize="none", quantile=0.1, workers=0, batch_size=BS, checkpoint_s=1e9)
    return DissectConfig(**(args | kw))


def _results(out):
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "run.json")
    data = {name: (out / name).read_bytes() for name in files if not name.endswith(".npz")}
    for name in files:
        if name.endswith(".npz"):
            with np.load(out / name) as z:
                data |= {f"{name}:{k}": z[k].tobytes() for k in z.files}
    return data


class Counter:
    """Counts calls of a method and raises KeyboardInterrupt on call number ``stop``."""

    def __init__(self, monkeypatch, cls, name, stop=None):
        self.calls, self.stop = 0, stop
        original = getattr(cls, name)

        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.stop is not None and self.calls == self.stop:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, wrapped)


@pytest.fixture(scope="module")
def clean(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    dissect(_cfg(toy, out))
    return _results(out)


def test_interrupted_tally_resumes_without_forward_pass(toy, tmp_path, monkeypatch, clean):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        Counter(m, Tally, "update", stop=5)  # two layers: batches 1 and 2 done, stopped in batch 3
        with pytest.raises(KeyboardInterrupt):
            dissect(_cfg(toy, out))
    state = json.loads((out / ".partial" / "state.json").read_text())
    assert state["thresholds"] and state["tally"]
    forward = Counter(monkeypatch, FeatureStore, "_forward")
    updates = Counter(monkeypatch, Tally, "update")
    record = dissect(_cfg(toy, out))
    assert record["resumed"] == {"feature_rows": N, "thresholds": True, "tally_images": 2 * BS}
    assert forward.calls == 0  # features came from the cache, thresholds from the saved state
    assert updates.calls == 2 * (N // BS - 2)
    assert _results(out) == clean
    assert not (out / ".partial").exists()


def test_interrupted_forward_pass_resumes_after_last_batch(toy, tmp_path, monkeypatch, clean):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        Counter(m, FeatureStore, "_forward", stop=3)
        with pytest.raises(KeyboardInterrupt):
            dissect(_cfg(toy, out))
    forward = Counter(monkeypatch, FeatureStore, "_forward")
    record = dissect(_cfg(toy, out))
    assert record["resumed"] == {"feature_rows": 2 * BS}
    assert forward.calls == N // BS - 2
    assert _results(out) == clean


def test_other_arguments_discard_partial_state(toy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        Counter(m, Tally, "update", stop=3)
        with pytest.raises(KeyboardInterrupt):
            dissect(_cfg(toy, out))
    record = dissect(_cfg(toy, out, quantile=0.2))
    assert record["resumed"] == {}
    assert not (out / ".partial").exists()


def test_finished_run_is_not_recomputed(toy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    dissect(_cfg(toy, out))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "run.json"}
    forward = Counter(monkeypatch, FeatureStore, "_forward")
    updates = Counter(monkeypatch, Tally, "update")
    record = dissect(_cfg(toy, out))
    assert forward.calls == updates.calls == 0
    assert record["recomputed"] == [] and "resumed" not in record
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "run.json"} == before
    assert set(record["summary"]) == {"pool", "conv"} and record["versions"]["torch"]
    assert json.loads((out / "run.json").read_text())["args"]["quantile"] == 0.1
