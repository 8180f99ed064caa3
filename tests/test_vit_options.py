"""ViT compute options do what they say, seen in the traced program and in the numbers: `scan_layers` scans one
block `depth` times and, given the same weights stacked, gives the unscanned logits; `remat_policy` puts a
jax.checkpoint region with that policy into the gradient's trace and leaves the gradients unchanged;
`dtype='bfloat16'` runs the matmuls in bf16 with float32 parameters. An option that is ignored fails each test."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.models.transformer import REMAT_POLICIES
from vlmjax.models.vit import ViT
from vlmjax.core.flops import _sub_jaxprs

CFG = dict(patch_size=(4, 4), width=32, depth=3, num_heads=2, mlp_dim=64, num_classes=5, pool_type="map",
           head_zeroinit=False)
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def eqns(jaxpr):
    """Every equation of a (closed) jaxpr, recursing into scan / remat / pjit / custom-derivative bodies."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from eqns(sub)


@functools.lru_cache(maxsize=None)
def unscanned_params():
    return nn.unbox(ViT(**CFG).init(jax.random.key(1), IMAGES))["params"]


def stacked(params):
    """The unscanned weights in the scanned layout: encoder/blockNN/... -> encoder/blocks/... with a depth axis."""
    enc = dict(params["encoder"])
    blocks = [enc.pop(f"block{i:02d}") for i in range(CFG["depth"])]
    enc["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return {**params, "encoder": enc}


def _logits(model, params):
    return model.apply({"params": params}, IMAGES)[0]


def test_scan_layers_scans_one_block_and_matches_the_unscanned_logits():
    params = unscanned_params()
    scanned_model = ViT(**CFG, scan_layers=True)
    own = nn.unbox(scanned_model.init(jax.random.key(1), IMAGES))["params"]
    assert jax.tree.map(jnp.shape, stacked(params)) == jax.tree.map(jnp.shape, own)  # same layout, leading depth
    want = _logits(ViT(**CFG), params)
    got = _logits(scanned_model, stacked(params))
    assert float(jnp.std(want)) > 1e-2  # a non-zero head: the logits carry the encoder's output
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    scans = [e for e in eqns(jax.make_jaxpr(functools.partial(_logits, scanned_model))(stacked(params)))
             if e.primitive.name == "scan"]
    assert [e.params["length"] for e in scans] == [CFG["depth"]]
    assert not [e for e in eqns(jax.make_jaxpr(functools.partial(_logits, ViT(**CFG)))(params))
                if e.primitive.name == "scan"]


REMAT = ("checkpoint", "remat2")  # jax.checkpoint's primitive, by jax version


def _grad_fn(model):
    return jax.grad(lambda p: jnp.sum(_logits(model, p) ** 2))


@functools.lru_cache(maxsize=None)
def plain_grads(scan):
    params = stacked(unscanned_params()) if scan else unscanned_params()
    return _grad_fn(ViT(**CFG, scan_layers=scan))(params)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
@pytest.mark.parametrize("scan", [False, True])
def test_remat_policy_is_in_the_gradient_trace_and_keeps_the_gradients(policy, scan):
    params = stacked(unscanned_params()) if scan else unscanned_params()
    plain, remat = ViT(**CFG, scan_layers=scan), ViT(**CFG, scan_layers=scan, remat_policy=policy)
    regions = [e for e in eqns(jax.make_jaxpr(_grad_fn(remat))(params)) if e.primitive.name in REMAT]
    assert len(regions) == (1 if scan else CFG["depth"])  # one per block; under scan one, in the body
    assert all(e.params["policy"] is REMAT_POLICIES[policy] for e in regions)
    assert not [e for e in eqns(jax.make_jaxpr(_grad_fn(plain))(params)) if e.primitive.name in REMAT]
    for a, b in zip(jax.tree.leaves(_grad_fn(remat)(params)), jax.tree.leaves(plain_grads(scan))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_runs_the_matmuls_in_bf16_with_float32_parameters():
    model = ViT(**CFG, dtype=jnp.bfloat16)
    params = nn.unbox(model.init(jax.random.key(1), IMAGES))["params"]
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, unscanned_params())

    def dot_input_dtypes(m):
        return [tuple(v.aval.dtype for v in e.invars) for e in eqns(jax.make_jaxpr(
            functools.partial(_logits, m))(unscanned_params())) if e.primitive.name == "dot_general"]

    bf16, f32 = dot_input_dtypes(model), dot_input_dtypes(ViT(**CFG))
    assert len(bf16) == len(f32) >= 4 * CFG["depth"]  # q/k/v/out, mlp, attention: every matmul is there
    assert all(d == (jnp.bfloat16, jnp.bfloat16) for d in bf16), bf16
    assert all(d == (jnp.float32, jnp.float32) for d in f32), f32
    got, want = _logits(model, unscanned_params()), _logits(ViT(**CFG), unscanned_params())
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05 * float(jnp.abs(want).max()))
    assert not np.array_equal(np.asarray(got, np.float32), np.asarray(want))  # it did compute in bf16
