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
