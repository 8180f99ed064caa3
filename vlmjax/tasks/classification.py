"""Image classification with the ViT: the first task, proving the core end to end (`experiments/vit_scenes.py`)."""
import jax.numpy as jnp
import numpy as np

from vlmjax.losses.classification import softmax_xent
from vlmjax.models.vit import ViT
from vlmjax.tasks.base import Task
from vlmjax.tasks.model_config import build_module


class ClassificationTask(Task):
    """Batch: `image` float[B, H, W, 3], `label` int[B]."""

    eval_kinds = ("classification", "fewshot")

    def __init__(self, config):
        super().__init__(config)
        self.model = build_module(ViT, config.model, num_classes=int(config.num_classes))

    @classmethod
    def config_defaults(cls):
        return {"num_classes": 0, "image_size": 64, "label_smoothing": 0.0}

    def validate(self):
        if int(self.config.num_classes) <= 1:
            raise ValueError(f"config.num_classes={self.config.num_classes}: must be > 1")

    def dummy_batch(self, batch_size):
        s = int(self.config.image_size)
        return {"image": np.zeros((batch_size, s, s, 3), np.float32), "label": np.zeros((batch_size,), np.int32)}

    def init(self, rng, batch):
        return self.model.init({"params": rng}, batch["image"], train=False)

    def loss(self, params, state, batch, rngs, step):
        logits, _ = self.model.apply({"params": params, **state}, batch["image"], train=True, rngs=rngs)
        xent = softmax_xent(logits, batch["label"], self.config.get("label_smoothing", 0.0))
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return xent.mean(), ({"accuracy": acc}, state)

    def predict_fns(self):
        def predict(variables, images):
            logits, _ = self.model.apply(variables, images, train=False)
            return logits

        def image_features(variables, images):  # float[B, D]: the pooled representation the head reads
            return self.model.apply(variables, images, train=False)[1]["pre_logits"]
        return {"logits": predict, "image_features": image_features}

