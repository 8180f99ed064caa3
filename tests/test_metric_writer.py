"""MetricWriter: metrics.jsonl rows and TensorBoard events (tensorboardX) that TensorBoard's own reader reads back."""
import glob
import io

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlmjax.core.metrics import MetricWriter, image_grid, read_metrics


def test_events_read_back_with_tensorboard(tmp_path):
    w = MetricWriter(str(tmp_path))
    w.write(1, {"train/loss": 2.5, "train/accuracy": 0.25})
    w.write(2, {"train/loss": 1.5})
    ims = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    w.write_images(2, {"recon": ims})
    w.close()
    assert read_metrics(str(tmp_path)) == [{"step": 1, "train/accuracy": 0.25, "train/loss": 2.5},
                                           {"step": 2, "train/loss": 1.5}]
    ea = EventAccumulator(glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))[0])
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("train/loss")] == [(1, 2.5), (2, 1.5)]
    assert [(e.step, e.value) for e in ea.Scalars("train/accuracy")] == [(1, 0.25)]
    (event,) = ea.Images("recon")
    png = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
    assert event.step == 2 and (event.height, event.width) == (4, 15)
    np.testing.assert_array_equal(png, image_grid(ims))  # lossless: the grid itself


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricWriter(str(tmp_path / "w"), enabled=False)
    w.write(1, {"a": 1.0})
    w.close()
    assert not (tmp_path / "w").exists()


def test_wandb_gets_the_same_rows_one_run_per_workdir(tmp_path, monkeypatch):
    import sys
    import types

    import ml_collections

    calls = []

    class Run:
        def log(self, row, step):
            calls.append(("log", step, row))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = ml_collections.ConfigDict(dict(project="p", entity="", name="", mode="offline"))
    ids = []
    for _ in range(2):  # a resumed run: the same W&B id
        w = MetricWriter(str(tmp_path / "run1"), wandb_cfg=cfg, config=ml_collections.ConfigDict({"seed": 3}))
        w.write(5, {"train/loss": 1.25})
        w.close()
        ids.append(calls[-3][1]["id"])
    init = calls[0][1]
    assert (init["project"], init["name"], init["mode"], init["resume"], init["config"]) == (
        "p", "run1", "offline", "allow", {"seed": 3})
    assert "entity" not in init and ids[0] == ids[1]
    assert calls[1:3] == [("log", 5, {"train/loss": 1.25}), ("finish",)]
    other = MetricWriter(str(tmp_path / "run2"), wandb_cfg=cfg)
    other.close()
    assert calls[-2][1]["id"] != ids[0]
    MetricWriter(str(tmp_path / "off"), wandb_cfg=ml_collections.ConfigDict(dict(project=""))).close()
    assert calls[-1] == ("finish",) and len(calls) == 8  # project '' -> no W&B call
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    import pytest

    with pytest.raises(ImportError, match="config.wandb.project is set but the wandb package is not installed"):
        MetricWriter(str(tmp_path / "run3"), wandb_cfg=cfg)


def test_progress_bar_redraws_on_a_terminal_only():
    from vlmjax.core.metrics import Progress

    out = io.StringIO()
    Progress(20, 4, 0, tty=True).tick(5, out)
    assert out.getvalue() == "\r[#####...............]  25% step 5/20"
    out = io.StringIO()
    Progress(20, 4, 0, tty=False).tick(5, out)
    assert out.getvalue() == ""
