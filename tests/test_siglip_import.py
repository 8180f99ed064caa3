"""SigLIP weight import: our TwoTowers with imported weights gives the embeddings of HF transformers' SiglipModel.

The reference is a tiny SiglipModel built from a random config (no download), every parameter redrawn at random so
that a swapped scale/bias or a transposed kernel cannot hide behind the default init (ones, zeros).
"""
import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vlmjax.models import siglip_big_vision, siglip_hf, two_towers, weight_files  # noqa: E402
from vlmjax.tasks.contrastive import build_two_towers  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=4)
TEXT = dict(vocab_size=64, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
            max_position_embeddings=12, projection_size=32)
B = 3


@pytest.fixture(scope="module")
def hf():
    torch.manual_seed(0)
    config = transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = name.endswith("weight") and ("norm" in name)
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if is_scale else 0.0))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (B, 16, 16, 3)).astype(np.float32)
    ids = rng.integers(0, TEXT["vocab_size"], (B, TEXT["max_position_embeddings"])).astype(np.int64)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
    ref = {"zimg": out.image_embeds.numpy(), "ztxt": out.text_embeds.numpy(), "logits": out.logits_per_image.numpy()}
    return model, config, images, ids, ref


def _ours(config, params, images, ids, scan_layers=False):
    spec = siglip_hf.siglip_model_config(config)
    cfg = spec["model"]
    if scan_layers:
        cfg = {**cfg, "image": {**cfg["image"], "scan_layers": True}, "text": {**cfg["text"], "scan_layers": True}}
    model = build_two_towers(cfg, TEXT["vocab_size"])
    mask = np.ones_like(ids, np.int32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), images, ids.astype(np.int32), mask))["params"]
    target = jax.tree.map(lambda x: tuple(x.shape), nn.meta.unbox(target))
    assert jax.tree.map(np.shape, params) == target  # every parameter present, nothing extra, same shapes
    zimg, ztxt, out = jax.jit(model.apply)({"params": params}, images, ids.astype(np.int32), mask)
    logits = np.asarray(zimg) @ np.asarray(ztxt).T * np.asarray(out["temperature"]) + np.asarray(out["bias"])
    return np.asarray(zimg), np.asarray(ztxt), logits


def _check(ours, ref):
    zimg, ztxt, logits = ours
    np.testing.assert_allclose(zimg, ref["zimg"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ztxt, ref["ztxt"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-3, rtol=1e-4)
    assert np.abs(ref["zimg"] @ ref["ztxt"].T).max() > 0.05  # the embeddings are not trivially equal/zero


def test_hf_state_dict_parity(hf):
    model, config, images, ids, ref = hf
    params = weight_files.nest(siglip_hf.from_hf(model.state_dict(), VISION["num_attention_heads"],
                                                 TEXT["num_attention_heads"]))
    _check(_ours(config, params, images, ids), ref)


def test_hf_safetensors_folder_parity_and_scanned_layout(hf, tmp_path):
    model, config, images, ids, ref = hf
    model.save_pretrained(tmp_path)  # config.json + model.safetensors, as on the hub
    assert (tmp_path / "model.safetensors").exists()
    params = two_towers.load(str(tmp_path))  # head counts read from config.json
    _check(_ours(config, params, images, ids), ref)
    scanned = two_towers.load(str(tmp_path / "model.safetensors"), VISION["num_attention_heads"],
                             TEXT["num_attention_heads"], scan_layers=True)
    _check(_ours(config, scanned, images, ids, scan_layers=True), ref)


def _big_vision_npz(model, path, scanned):
    """Write the HF weights under big_vision's names (the key list HF's convert_siglip_to_hf maps from)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    vh, th = VISION["num_attention_heads"], TEXT["num_attention_heads"]
    out = {"params/img/embedding/kernel": sd["vision_model.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
           "params/img/embedding/bias": sd["vision_model.embeddings.patch_embedding.bias"],
           "params/img/pos_embedding": sd["vision_model.embeddings.position_embedding.weight"][None],
           "params/txt/Embed_0/embedding": sd["text_model.embeddings.token_embedding.weight"],
           "params/txt/pos_embedding": sd["text_model.embeddings.position_embedding.weight"][None],
           "params/txt/head/kernel": sd["text_model.head.weight"].T, "params/txt/head/bias": sd["text_model.head.bias"],
           "params/t": sd["logit_scale"], "params/b": sd["logit_bias"]}

    def mha(prefix, q, k, v, o, heads):  # (weight, bias) pairs in torch layout
        for name, (w, b) in zip(("query", "key", "value"), (q, k, v)):
            out[f"{prefix}/{name}/kernel"] = w.T.reshape(w.shape[1], heads, -1)
            out[f"{prefix}/{name}/bias"] = b.reshape(heads, -1)
        out[f"{prefix}/out/kernel"] = o[0].T.reshape(heads, -1, o[0].shape[0])
        out[f"{prefix}/out/bias"] = o[1]

    def ln(prefix, src):
        out[f"{prefix}/scale"], out[f"{prefix}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def mlp(prefix, src):
        for i, fc in enumerate(("fc1", "fc2")):
            out[f"{prefix}/Dense_{i}/kernel"] = sd[f"{src}.{fc}.weight"].T
            out[f"{prefix}/Dense_{i}/bias"] = sd[f"{src}.{fc}.bias"]

    for tower, enc, hf_name, heads, depth in (("img", "Transformer", "vision_model", vh, VISION["num_hidden_layers"]),
                                              ("txt", "Encoder_0", "text_model", th, TEXT["num_hidden_layers"])):
        for i in range(depth):
            p, s = f"params/{tower}/{enc}/encoderblock_{i}", f"{hf_name}.encoder.layers.{i}"
            ln(f"{p}/LayerNorm_0", f"{s}.layer_norm1")
            ln(f"{p}/LayerNorm_1", f"{s}.layer_norm2")
            mha(f"{p}/MultiHeadDotProductAttention_0",
                *[(sd[f"{s}.self_attn.{n}.weight"], sd[f"{s}.self_attn.{n}.bias"]) for n in
                  ("q_proj", "k_proj", "v_proj", "out_proj")], heads)
            mlp(f"{p}/MlpBlock_0", f"{s}.mlp")
    ln("params/img/Transformer/encoder_norm", "vision_model.post_layernorm")
    ln("params/txt/Encoder_0/encoder_norm", "text_model.final_layer_norm")
    h = "vision_model.head"
    out["params/img/MAPHead_0/probe"] = sd[f"{h}.probe"]
    w, b = np.split(sd[f"{h}.attention.in_proj_weight"], 3), np.split(sd[f"{h}.attention.in_proj_bias"], 3)
    mha("params/img/MAPHead_0/MultiHeadDotProductAttention_0", *zip(w, b),
        (sd[f"{h}.attention.out_proj.weight"], sd[f"{h}.attention.out_proj.bias"]), vh)
    ln("params/img/MAPHead_0/LayerNorm_0", f"{h}.layernorm")
    mlp("params/img/MAPHead_0/MlpBlock_0", f"{h}.mlp")
    if scanned:  # big_vision's scan_layers checkpoints: one 'encoderblock' with a leading depth axis
        groups = {}
        for k in [k for k in out if "/encoderblock_" in k]:
            head, rest = k.split("/encoderblock_")
            i, tail = rest.split("/", 1)
            groups.setdefault(f"{head}/encoderblock/{tail}", {})[int(i)] = out.pop(k)
        out.update({k: np.stack([g[i] for i in range(len(g))]) for k, g in groups.items()})
    np.savez(path, **out)


@pytest.mark.parametrize("scanned", [False, True])
def test_big_vision_npz_parity(hf, tmp_path, scanned):
    model, config, images, ids, ref = hf
    _big_vision_npz(model, tmp_path / "siglip.npz", scanned)
    _check(_ours(config, two_towers.load(str(tmp_path / "siglip.npz")), images, ids), ref)


def test_unconverted_keys_and_unsupported_configs_raise(hf):
    model, config, *_ = hf
    sd = dict(model.state_dict())
    sd["vision_model.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"1 keys not converted.*vision_model\.extra\.weight"):
        siglip_hf.from_hf(sd, VISION["num_attention_heads"])
    with pytest.raises(NotImplementedError, match="hidden_act='gelu'"):
        siglip_hf.siglip_model_config(transformers.SiglipConfig(vision_config={**VISION, "hidden_act": "gelu"},
                                                         text_config=TEXT))
    with pytest.raises(ValueError, match="big_vision checkpoint: no rule for 'img/Transformer/odd_0/x'"):
        siglip_big_vision.from_big_vision({"params/img/Transformer/odd_0/x": np.zeros(1)})
