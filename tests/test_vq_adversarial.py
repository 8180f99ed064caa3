"""VQGAN-style adversarial loss: hinge losses against their formulas, the PatchGAN's logit grid, and the task's
one-optimizer design checked gradient by gradient against independently written generator and discriminator
losses (off = the plain VQ-VAE; before `start_step` nothing adversarial; after it the tokenizer gets exactly
weight x the generator gradient and the discriminator exactly its own)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlmjax.losses.adversarial import adversarial_gate, hinge_d_loss, hinge_g_loss
from vlmjax.losses.vq import vqvae_loss
from vlmjax.models.discriminator import PatchDiscriminator
from vlmjax.tasks.vqvae import VQVAETask, generator_params
from vlmjax.core import config as config_lib
from vlmjax.core.loop import Trainer

WEIGHT, START = 0.7, 5


def test_hinge_losses_match_formula():
    r = np.random.RandomState(0)
    real, fake = r.randn(4, 3, 3) * 2, r.randn(4, 3, 3) * 2
    want_d = 0.5 * (np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean())
    np.testing.assert_allclose(hinge_d_loss(jnp.asarray(real), jnp.asarray(fake)), want_d, rtol=1e-6)
    np.testing.assert_allclose(hinge_g_loss(jnp.asarray(fake)), -fake.mean(), rtol=1e-6)
    # Confident, correct logits cost the discriminator nothing; the generator's loss has no floor.
    assert float(hinge_d_loss(jnp.full((2,), 1.5), jnp.full((2,), -3.0))) == 0.0
    assert float(hinge_g_loss(jnp.full((2,), 10.0))) == -10.0
    np.testing.assert_array_equal([float(adversarial_gate(s, START)) for s in (0, START - 1, START, 100)],
                                  [0, 0, 1, 1])


@pytest.mark.parametrize("layers,size,grid", [(1, 16, 8), (2, 16, 4), (3, 32, 4), (3, 20, 3)])
def test_patch_discriminator_logit_grid(layers, size, grid):
    d = PatchDiscriminator(channels=4, num_layers=layers, norm_groups=2)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    v = jax.eval_shape(lambda x: d.init(jax.random.key(0), x), x)
    out = jax.eval_shape(lambda v, x: d.apply(v, x), v, x)
    assert out.shape == (2, grid, grid) and out.dtype == jnp.float32


# -- the task's loss ---------------------------------------------------------------------------------------------------
def task_config(data_dir="", **adversarial):
    c = ml_collections.ConfigDict()
    c.task = "vqvae"
    c.image_size = 8
    c.recon_loss = "l2"
    c.batch_size = 8
    c.total_steps = 10
    c.data = dict(name="scenes/tiny", data_dir=data_dir)
    # Plain VQ (no restarts, no dropout): the loss is a deterministic function of the params.
    c.model = dict(ch=4, ch_mult=(1, 2), num_res_blocks=0, z_channels=4, norm_groups=2, num_codes=8, code_dim=4)
    if adversarial:
        c.adversarial = {**dict(disc_channels=4, disc_layers=2, disc_norm_groups=2), **adversarial}
    cfg = config_lib.resolve(c, VQVAETask.config_defaults())
    task = VQVAETask(cfg)
    task.validate()
    return task


@pytest.fixture(scope="module")
def grads():
    """(plain task, gradients of the adversarial task's loss before and at START, reference gradients)."""
    plain, adv = task_config(), task_config(weight=WEIGHT, start_step=START)
    images = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
    batch = {"image": images}
    variables = nn.meta.unbox(adv.init(jax.random.key(0), batch))
    params, state = variables.pop("params"), variables
    gen, disc = generator_params(params), params["disc"]
    d_logits = lambda p, x: adv.disc.apply({"params": p}, x)  # noqa: E731

    # One compile, called at two steps (the step is traced, as in the trainer).
    adv_grad = jax.jit(lambda p, step: jax.grad(lambda p: adv.loss(p, state, batch, {}, step)[0])(p))

    @jax.jit
    def reference(gen, disc):
        """Gradients of the plain VQ-VAE loss and, written out here, of the two hinge losses."""
        def plain_loss_and_recon(g):
            (recon, aux), _ = plain.model.apply({"params": g, **state}, images, train=True, mutable=["vq_stats"])
            return vqvae_loss(images, recon, aux, "l2")[0], recon

        (_, recon), vjp = jax.vjp(plain_loss_and_recon, gen)
        d_recon = jax.grad(lambda r: -jnp.mean(d_logits(disc, r)))(recon)  # generator hinge: -mean D(recon)
        disc_hinge = jax.grad(lambda d: 0.5 * (jnp.mean(jax.nn.relu(1 - d_logits(d, images)))
                                               + jnp.mean(jax.nn.relu(1 + d_logits(d, recon)))))(disc)
        return {"plain": vjp((jnp.ones(()), jnp.zeros_like(recon)))[0],
                "gen_hinge": vjp((jnp.zeros(()), d_recon))[0], "disc_hinge": disc_hinge}

    return adv_grad(params, START - 1), adv_grad(params, START), reference(gen, disc)


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def tree_norm(t):
    return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(t))))


def test_weight_zero_is_the_plain_vqvae():
    plain, off = task_config(), task_config(weight=0.0, start_step=0)
    assert off.disc is None
    batch = {"image": jnp.zeros((2, 8, 8, 3))}
    variables = jax.eval_shape(lambda: nn.meta.unbox(off.init(jax.random.key(0), batch)))
    assert "disc" not in variables["params"]
    params, state = variables.pop("params"), variables
    # Loss and gradients are the same program as without `config.adversarial` (traced, not compiled).
    trace = lambda task: str(jax.make_jaxpr(jax.value_and_grad(  # noqa: E731
        lambda p, st, b, step: task.loss(p, st, b, {}, step)[0]))(params, state, batch, 7))
    assert trace(off) == trace(plain)


def test_no_adversarial_gradient_before_start_step(grads):
    before, _, ref = grads
    assert_trees_close(generator_params(before), ref["plain"], rtol=1e-5, atol=1e-8)
    assert tree_norm(before["disc"]) == 0.0  # the discriminator waits too (taming's disc_start)


def test_after_start_step_tokenizer_gets_weighted_generator_gradient(grads):
    _, after, ref = grads
    g_gen = generator_params(after)
    assert tree_norm(ref["gen_hinge"]) > 1e-3 * tree_norm(ref["plain"])  # not negligible here
    # Exactly plain + weight x d(-mean D(recon)) / d theta_G: the discriminator's loss adds nothing to the tokenizer.
    want = jax.tree.map(lambda p, h: p + WEIGHT * h, ref["plain"], ref["gen_hinge"])
    assert_trees_close(g_gen, want, rtol=1e-4, atol=1e-7)
    assert tree_norm(jax.tree.map(jnp.subtract, g_gen, ref["plain"])) > 0.5 * WEIGHT * tree_norm(ref["gen_hinge"])


def test_discriminator_gets_only_its_hinge_gradient(grads):
    _, after, ref = grads
    # Unweighted, from its own loss only: the generator's term (which pushes D(recon) up) does not reach it.
    assert tree_norm(ref["disc_hinge"]) > 0
    assert_trees_close(after["disc"], ref["disc_hinge"], rtol=1e-4, atol=1e-7)


def test_bad_adversarial_config_names_the_key():
    with pytest.raises(ValueError, match=r"unknown key config.adversarial.start \(did you mean 'start_step'\?\)"):
        task_config(weight=1.0, start=3)
    with pytest.raises(ValueError, match=r"config.adversarial.weight=-1.0: must be >= 0"):
        task_config(weight=-1.0)
    with pytest.raises(ValueError, match="config.adversarial.disc_channels=6 is not divisible by "
                                         "config.adversarial.disc_norm_groups=4"):
        task_config(weight=1.0, disc_channels=6, disc_norm_groups=4)


def test_trainer_state_holds_discriminator_params_and_their_optimizer_state(scenes_tiny_dir, tmp_path):
    # Abstract state only (what init_state creates, sharded): no compilation.
    task = task_config(scenes_tiny_dir, weight=WEIGHT, start_step=START)
    state = Trainer(task.config, str(tmp_path)).abstract_state
    assert set(state["params"]["disc"]) == {"conv_in", "conv1", "norm1", "conv2", "norm2", "conv_out"}
    opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]]
    assert any("'disc'" in p and "'conv_out'" in p for p in opt_paths)  # Adam moments for the discriminator too
    assert "disc" not in state["model_state"].get("vq_stats", {})
