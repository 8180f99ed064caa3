"""Hinge GAN losses (VQGAN / SAGAN) and the one-step generator + discriminator objective.

One optimizer, one step: the discriminator's params are trained by the same loss as the generator's. The sum

    total = gate * (weight * L_G(recon; sg[theta_D]) + L_D(images, sg[recon]; theta_D))

has disjoint gradient supports: L_G reaches only the generator (the discriminator's params are stop-gradient'd
there) and L_D reaches only the discriminator (the reconstructions are stop-gradient'd there; real images depend
on no parameter). So d total / d theta_G = gate * weight * dL_G / d theta_G and d total / d theta_D = gate *
dL_D / d theta_D: exactly the gradients two separate optimizers would get, and an element-wise optimizer (Adam,
SGD; weight decay per parameter) applies them as two optimizers stepping together on the shared step counter.
This is simultaneous GAN training; taming-transformers steps G and then D on the same batch (D sees the updated
G's reconstructions), a difference of one step in what D judges. Two couplings remain: global-norm gradient
clipping (`optimizer.clip_norm`) clips the joint norm, and the learning-rate schedule is shared (scale the
discriminator's with `optimizer.lr_mults`, e.g. (('disc/.*', 0.5),)).
"""
import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def hinge_d_loss(logits_real, logits_fake):
    """Discriminator hinge loss 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))): float[...] x2 -> scalar."""
    real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
    fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
    return 0.5 * (real + fake)


def hinge_g_loss(logits_fake):
    """Generator hinge loss -mean D(x_hat): float[...] -> float32 scalar."""
    return -jnp.mean(logits_fake.astype(jnp.float32))


def adversarial_gate(step, start_step: int):
    """1.0 from train step `start_step` on (the trainer's 0-based state step), 0.0 before: float32 scalar."""
    return (jnp.asarray(step) >= start_step).astype(jnp.float32)


def adversarial_loss(disc_logits, disc_params, images, recon, weight: float, gate):
    """gate * (weight * L_G + L_D) with the stop-gradients of the module docstring.

    disc_logits(params, images float[B, H, W, 3]) -> float[B, ...] patch logits; images, recon float[B, H, W, 3];
    gate float32 scalar (`adversarial_gate`). Returns (scalar loss, metrics of scalars).
    """
    g_loss = hinge_g_loss(disc_logits(sg(disc_params), recon))
    real = disc_logits(disc_params, images)
    fake = disc_logits(disc_params, sg(recon))
    d_loss = hinge_d_loss(real, fake)
    total = gate * (weight * g_loss + d_loss)
    metrics = {"loss_gen_adv": g_loss, "loss_disc": d_loss, "disc_logits_real": jnp.mean(real),
               "disc_logits_fake": jnp.mean(fake), "adv_gate": gate}
    return total, metrics
