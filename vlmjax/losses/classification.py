"""Classification losses."""
import jax
import jax.numpy as jnp


def softmax_xent(logits, labels, label_smoothing: float = 0.0):
    """Per-example cross-entropy: logits float[B, C], labels int[B] -> float[B] (computed in float32)."""
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        onehot = onehot * (1 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
