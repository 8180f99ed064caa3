"""VQ-VAE with a ViT encoder and/or decoder (ViT-VQGAN option): un-patchify against an explicit loop, shapes and
grid sizes for f = 4 / 8 and mixed conv/ViT, config errors, logical shardings on a 3-axis mesh, and a tiny ViT
VQ-VAE that learns a fixed batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vlmjax.losses.vq import vqvae_loss
from vlmjax.models.vqvae import VQVAE, unpatchify
from vlmjax.core.mesh import DEFAULT_RULES, logical_shardings, make_mesh

VIT = dict(vit_width=16, vit_depth=1, vit_heads=2, num_codes=16, code_dim=4)
CONV = dict(ch=4, num_res_blocks=0, z_channels=4, norm_groups=2)


def test_unpatchify_places_token_channels_at_pixels():
    b, h, w, f, c = 2, 3, 4, 2, 3
    x = np.random.RandomState(0).randn(b, h, w, f * f * c).astype(np.float32)
    want = np.zeros((b, h * f, w * f, c), np.float32)
    for i in range(h):
        for j in range(w):
            for a in range(f):
                for bb in range(f):
                    want[:, i * f + a, j * f + bb] = x[:, i, j, (a * f + bb) * c:(a * f + bb + 1) * c]
    np.testing.assert_array_equal(unpatchify(jnp.asarray(x), f), want)


@pytest.mark.parametrize("encoder,decoder,f,ch_mult", [
    ("vit", "vit", 4, (1, 2)),  # ch_mult unused when neither side is conv
    ("vit", "vit", 8, (1, 2)),
    ("vit", "conv", 4, (1, 2, 2)),
    ("conv", "vit", 8, (1, 1, 2, 2)),
])
def test_vit_encode_decode_shapes(encoder, decoder, f, ch_mult):
    model = VQVAE(encoder=encoder, decoder=decoder, patch_size=f, ch_mult=ch_mult, **CONV, **VIT)
    assert model.downsample_factor == f
    x = jax.ShapeDtypeStruct((2, 32, 64, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    recon, aux = jax.eval_shape(lambda v, x: model.apply(v, x), v, x)
    assert recon.shape == (2, 32, 64, 3) and aux["codes"].shape == (2, 32 // f, 64 // f)
    codes = jax.eval_shape(lambda v, x: model.apply(v, x, method=VQVAE.encode), v, x)
    assert codes.shape == (2, 32 // f, 64 // f) and codes.dtype == jnp.int32
    img = jax.eval_shape(lambda v, c: model.apply(v, c, method=VQVAE.decode), v, codes)
    assert img.shape == (2, 32, 64, 3) and img.dtype == jnp.float32
    params = v["params"]
    # The ViT side really is the core's ViT / transformer blocks, the conv side the ResNet stack.
    assert ("embedding" in params["enc"]) == (encoder == "vit")
    assert ("to_pixels" in params["dec"]) == (decoder == "vit")
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 30, 30, 3))), v)


@pytest.mark.parametrize("kw,message", [
    (dict(encoder="resnet"), "config.model.encoder='resnet': expected one of 'conv', 'vit'"),
    (dict(decoder="vit", patch_size=4, ch_mult=(1, 2)),
     "config.model.patch_size=4 differs from the conv side's f=2"),
    (dict(encoder="vit", vit_width=18, vit_heads=4), "config.model.vit_width=18 is not divisible by"),
    (dict(encoder="vit", vit_posemb="rope"), "config.model.vit_posemb='rope'"),
])
def test_bad_encoder_decoder_fields_name_the_key(kw, message):
    with pytest.raises(ValueError) as e:
        VQVAE(**kw).check("config.model")
    assert message in str(e.value)


def test_vit_vqvae_shards_over_a_three_axis_mesh():
    # Every ViT-side parameter carries logical names, so the core can lay it out for FSDP + tensor parallelism.
    model = VQVAE(encoder="vit", decoder="vit", patch_size=4, **VIT)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((4, 16, 16, 3))))
    with nn.logical_axis_rules(DEFAULT_RULES):
        _, sh = logical_shardings(boxed, mesh, DEFAULT_RULES)
    for side, blocks in (("enc", "encoder"), ("dec", "decoder")):
        spec = sh["params"][side][blocks]["block00"]["mlp"]["fc1"]["kernel"].spec
        assert tuple(spec) == ("fsdp", "tensor"), (side, spec)


# -- learning ----------------------------------------------------------------------------------------------------------
STEPS = 200
LEARN_MODEL = VQVAE(encoder="vit", decoder="vit", patch_size=4, vit_width=32, vit_depth=1, vit_heads=2, num_codes=16,
                    code_dim=8, restart_unused=True, restart_window=10)


def mosaic_batch():
    """float[8, 16, 16, 3]: each 4x4 patch one of 8 palette colours, so 8 codes at f = 4 can represent it exactly."""
    r = np.random.RandomState(0)
    palette = r.uniform(-1, 1, (8, 3))
    idx = r.randint(0, 8, (8, 4, 4))
    return jnp.asarray(np.repeat(np.repeat(palette[idx], 4, axis=1), 4, axis=2), jnp.float32)


@pytest.fixture(scope="module")
def learnt():
    images = mosaic_batch()
    variables = nn.meta.unbox(LEARN_MODEL.init(jax.random.key(0), images))
    params, stats = variables["params"], {"vq_stats": variables["vq_stats"]}
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, stats, opt_state, rng):
        def loss_fn(p):
            (recon, aux), new = LEARN_MODEL.apply({"params": p, **stats}, images, train=True, rngs={"vq": rng},
                                                  mutable=["vq_stats"])
            loss, metrics = vqvae_loss(images, recon, aux, "l2")
            return loss, (new, metrics)

        (_, (stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, metrics["loss_recon"]

    opt_state, recon_losses = tx.init(params), []
    for i in range(STEPS):
        params, stats, opt_state, loss = step(params, stats, opt_state, jax.random.key(i))
        recon_losses.append(float(loss))
    return images, {"params": params, **stats}, recon_losses


def test_tiny_vit_vqvae_learns_a_fixed_batch(learnt):
    images, _, losses = learnt
    # Baseline: each image rendered as its mean colour (0.23 here). Measured: 1.29 at step 1 (random init), 0.004
    # after 200 steps; without restarts the codebook collapses to ~5 codes and stalls near 0.11. A tenth of the
    # baseline needs most of the 8 palette colours as distinct codes in their places.
    baseline = float(jnp.mean((images - images.mean(axis=(1, 2), keepdims=True)) ** 2))
    assert losses[-1] < 0.1 * baseline, (losses[::20], baseline)
    assert losses[-1] < 0.05 * losses[0]


def test_vit_decode_of_encode_equals_forward(learnt):
    images, variables, _ = learnt
    recon, aux = LEARN_MODEL.apply(variables, images)
    codes = LEARN_MODEL.apply(variables, images, method=VQVAE.encode)
    np.testing.assert_array_equal(codes, aux["codes"])
    assert codes.shape == (8, 4, 4) and len(np.unique(codes)) >= 8  # the 8 colours took distinct codes
    np.testing.assert_allclose(LEARN_MODEL.apply(variables, codes, method=VQVAE.decode), recon, atol=1e-5)
