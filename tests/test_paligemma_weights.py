"""The prefix-LM's weights from and to HF Gemma / PaliGemma and big_vision PaliGemma: on tiny random HF models
(GQA and MQA, head_dim decoupled from the width, random norm weights so Gemma's (1 + w) is exercised), HF -> ours
gives HF's logits, ours -> HF export loads in transformers with our logits, and the .npz reads back."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vlmjax.models import gemma_weights as gw  # noqa: E402
from vlmjax.models import paligemma_weights as pw  # noqa: E402
from vlmjax.models.lm import DecoderLM  # noqa: E402
from vlmjax.models.masks import make_attn_mask  # noqa: E402
from vlmjax.models.vit import ViT  # noqa: E402
from vlmjax.models.vlm import VLM  # noqa: E402
from vlmjax.models.weight_files import flatten, nest  # noqa: E402

GEMMA = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=4, vision_use_head=False)
TEXT = dict(GEMMA, hidden_size=48, intermediate_size=96, num_key_value_heads=1)  # MQA
IMAGE_TOKEN, N_IMG, PREFIX, SUFFIX = 299, 16, 5, 4


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def gemma():
    cfg = transformers.GemmaConfig(**GEMMA, attn_implementation="eager")
    return randomize(transformers.GemmaForCausalLM(cfg))


@pytest.fixture(scope="module")
def paligemma():
    cfg = transformers.PaliGemmaConfig(vision_config=VISION, text_config=TEXT, image_token_index=IMAGE_TOKEN,
                                       projection_dim=TEXT["hidden_size"], vocab_size=TEXT["vocab_size"])
    cfg._attn_implementation = "eager"
    return randomize(transformers.PaliGemmaForConditionalGeneration(cfg), seed=1)


def lm_logits(lm_cfg, params, ids, scan=False):
    model = DecoderLM(**lm_cfg, scan_layers=scan)
    x = model.apply({"params": params}, jnp.asarray(ids), method="embed")
    return np.asarray(model.apply({"params": params}, x)[0])


def vlm_model(model_cfg):
    return VLM(lm=DecoderLM(**model_cfg["lm"]), vit=ViT(**model_cfg["vit"], pool_type="none"), projector="linear")


def vlm_logits(model_cfg, params, images, text, n_prefix, positions=None):
    """Image tokens + text, the image and first `n_prefix` text tokens a bidirectional prefix, the rest causal."""
    model, v = vlm_model(model_cfg), {"params": params}
    x = jnp.concatenate([model.apply(v, jnp.asarray(images), method="embed_image"),
                         model.apply(v, jnp.asarray(text), method="embed")], axis=1)
    b, length = x.shape[:2]
    mask_ar = np.zeros((b, length), np.int32)
    mask_ar[:, length - text.shape[1] + n_prefix:] = 1
    mask = make_attn_mask(np.ones((b, length)), mask_ar)
    return np.asarray(model.apply(v, x, mask, positions)[0])


def paligemma_inputs(seed=0, vocab=TEXT["vocab_size"], image_token=IMAGE_TOKEN):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    text = rng.integers(0, vocab - 1, (2, PREFIX + SUFFIX))
    ids = np.concatenate([np.full((2, N_IMG), image_token), text], 1)
    token_type = np.concatenate([np.zeros((2, N_IMG + PREFIX)), np.ones((2, SUFFIX))], 1)
    return images, text, ids, token_type


def hf_paligemma_logits(model, images, ids, token_type):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                     attention_mask=torch.ones(ids.shape, dtype=torch.long),
                     token_type_ids=torch.from_numpy(token_type).long()).logits.numpy()


def test_gemma_from_hf_and_back(gemma, tmp_path):
    ids = np.random.default_rng(0).integers(0, GEMMA["vocab_size"], (2, 11))
    with torch.no_grad():
        ref = gemma(torch.from_numpy(ids)).logits.numpy()
    lm_cfg = gw.gemma_lm_config(gemma.config)
    assert (lm_cfg["num_kv_heads"], lm_cfg["head_dim"], lm_cfg["rope_theta"]) == (2, 16, 500.0)
    params = gw.load_hf_gemma(gemma.state_dict(), gemma.config)
    np.testing.assert_allclose(lm_logits(lm_cfg, params, ids), ref, atol=1e-4, rtol=0)
    scanned = gw.load_hf_gemma(gemma.state_dict(), gemma.config, scan_layers=True)
    np.testing.assert_allclose(lm_logits(lm_cfg, scanned, ids, scan=True), ref, atol=1e-4, rtol=0)

    # ours (perturbed, scanned) -> export -> transformers loads it -> our logits
    ours = jax.tree.map(lambda w: w + np.float32(0.05) * np.sign(w), scanned)
    out = str(tmp_path / "gemma")
    gw.export_hf_gemma(ours, {"lm": lm_cfg}, out)
    back = transformers.GemmaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        got = back(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(got, lm_logits(lm_cfg, ours, ids, scan=True), atol=1e-4, rtol=0)
    # ... and the folder reads back (config.json next to it) to the same parameters
    again = flatten(gw.load_hf_gemma(out, scan_layers=True))
    want = flatten(ours)
    assert sorted(again) == sorted(want)
    for k in want:
        np.testing.assert_allclose(again[k], want[k], atol=1e-6, err_msg=k)
    # the format registry's load: under 'lm/' for a prefix-LM run's (scanned) parameters
    vlm = pw.load(out, fmt="hf_gemma", template={"lm/blocks/attn/q_kernel": (2, 32, 4, 16)})
    np.testing.assert_allclose(vlm["lm"]["blocks"]["attn"]["q_kernel"], ours["blocks"]["attn"]["q_kernel"], atol=1e-6)
    with pytest.raises(ValueError, match="config.model.lm.mlp_activation='silu'"):
        gw.export_hf_gemma(ours, {"lm": dict(lm_cfg, mlp_activation="silu")}, out)


def test_paligemma_from_hf_matches_prefix_lm_logits(paligemma):
    images, text, ids, token_type = paligemma_inputs()
    ref = hf_paligemma_logits(paligemma, images, ids, token_type)
    cfg = pw.paligemma_model_config(paligemma.config)
    assert cfg["image_size"] == 16 and cfg["model"]["lm"]["num_kv_heads"] == 1
    # a config.json as released (google/paligemma-3b-pt-224): what equals the defaults left out
    short = paligemma.config.to_dict()
    short["vision_config"] = {k: v for k, v in short["vision_config"].items() if k != "image_size"}
    short["vision_config"]["num_image_tokens"] = N_IMG
    short["text_config"] = {k: v for k, v in short["text_config"].items() if k not in ("hidden_act", "rope_parameters")}
    assert pw.paligemma_model_config(short)["image_size"] == 16
    assert pw.paligemma_model_config(short)["model"]["lm"]["rope_theta"] == 10_000.0
    params = pw.load_hf_paligemma(paligemma.state_dict(), paligemma.config)
    positions = np.broadcast_to(np.arange(ids.shape[1]) + 1, ids.shape)  # HF PaliGemma counts from 1
    ours = vlm_logits(cfg["model"], params, images, text, PREFIX, positions)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # RoPE is relative: our default positions (from 0) give the same logits
    np.testing.assert_allclose(vlm_logits(cfg["model"], params, images, text, PREFIX), ref, atol=1e-4, rtol=0)
    # the prefix really is bidirectional in both: a fully causal pass differs
    assert np.abs(vlm_logits(cfg["model"], params, images, text, 0) - ref).max() > 1e-2


def test_paligemma_export_hf_and_big_vision(paligemma, tmp_path):
    cfg = pw.paligemma_model_config(paligemma.config)["model"]
    hf_params = pw.load_hf_paligemma(paligemma.state_dict(), paligemma.config)
    ours = jax.tree.map(lambda w: w + np.float32(0.05) * np.sign(w), hf_params)
    vocab = TEXT["vocab_size"]
    images, text, ids, token_type = paligemma_inputs(seed=2, image_token=vocab)  # our export: image id = vocab
    want = vlm_logits(cfg, ours, images, text, PREFIX)

    out = str(tmp_path / "pg")
    pw.export_hf_paligemma(ours, cfg, out)
    back = transformers.PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    np.testing.assert_allclose(hf_paligemma_logits(back, images, ids, token_type), want, atol=1e-4, rtol=0)
    reread = flatten(pw.load_hf_paligemma(out))
    assert sorted(reread) == sorted(flatten(ours))

    # big_vision .npz both ways; the registry's load stacks blocks for a scanned template
    npz = pw.export_big_vision_paligemma(ours, cfg, str(tmp_path / "pg.npz"))[0]
    keys = set(np.load(npz).files)
    assert {"params/llm/layers/attn/q_einsum/w", "params/llm/layers/attn/kv_einsum/w", "params/img/head/kernel",
            "params/llm/embedder/input_embedding", "params/img/Transformer/encoderblock_0/LayerNorm_0/scale"} <= keys
    bv = pw.load(npz, fmt="big_vision_paligemma")
    np.testing.assert_allclose(vlm_logits(cfg, bv, images, text, PREFIX), want, atol=1e-5, rtol=0)
    template = {"lm/blocks/attn/q_kernel": (), "vit/encoder/blocks/ln1/scale": ()}
    scanned = pw.load(npz, fmt="big_vision_paligemma", template=template)
    assert scanned["lm"]["blocks"]["attn"]["q_kernel"].shape[0] == TEXT["num_hidden_layers"]
    assert "blocks" in scanned["vit"]["encoder"]
    with pytest.raises(ValueError, match="config.model.projector='mlp2x_gelu'"):
        pw.check_exportable(dict(cfg, projector="mlp2x_gelu"), "big_vision_paligemma")


def test_big_vision_mha_fuses_qkv():
    """num_kv_heads == num_heads: big_vision's Attention holds one qkv_einsum [3, H, D, Dh]; round trip exact."""
    rng = np.random.default_rng(0)
    flat = {"embedding": rng.normal(size=(10, 8)), "final_norm/scale": rng.normal(size=8)}
    for n, shape in (("attn/q_kernel", (8, 2, 4)), ("attn/k_kernel", (8, 2, 4)), ("attn/v_kernel", (8, 2, 4)),
                     ("attn/out_kernel", (2, 4, 8)), ("mlp/gate_kernel", (8, 16)), ("mlp/up_kernel", (8, 16)),
                     ("mlp/down_kernel", (16, 8)), ("pre_attn_norm/scale", (8,)), ("pre_mlp_norm/scale", (8,))):
        for i in range(3):
            flat[f"blocks_{i}/{n}"] = rng.normal(size=shape)
    bv = gw.lm_to_big_vision(dict(flat))
    assert bv["layers/attn/qkv_einsum/w"].shape == (3, 3, 2, 8, 4) and "layers/attn/q_einsum/w" not in bv
    back = gw.lm_from_big_vision(dict(bv))
    assert sorted(back) == sorted(flat)
    for k in flat:
        np.testing.assert_allclose(back[k], flat[k], atol=1e-12, err_msg=k)
    assert nest(gw.stack_lm(back))["blocks"]["attn"]["q_kernel"].shape == (3, 8, 2, 4)


def test_init_from_hf_paligemma_and_export_with_the_cli(paligemma, tmp_path):
    """config.init_from (format 'hf_paligemma') fills a prefix-LM run (scanned LM; total_steps 0: the imported
    weights checkpointed as they are), and `vlmjax-export --format hf_paligemma` gives transformers the HF model's
    logits back; the run's 'hf_gemma' and 'big_vision_paligemma' exports hold the same weights."""
    import ml_collections

    import fake_data  # noqa: F401  (registers the `fake:` source)
    from vlmjax.cli import export as export_cli
    from vlmjax.core.loop import train
    from vlmjax.data.tokenizer import train_from_texts

    tok = train_from_texts([f"example {i} of a red blue green circle square" for i in range(300)],
                           str(tmp_path / "spm.model"), vocab_size=300)
    paligemma.save_pretrained(str(tmp_path / "hf"))
    c = ml_collections.ConfigDict()
    c.task, c.tokenizer, c.image_size, c.text_len, c.image_input = "prefixlm", tok.path, 16, 16, "continuous"
    c.total_steps, c.batch_size, c.log_every_steps, c.seed = 0, 8, 1, 0
    pp = [dict(op="decode", key="image"), dict(op="value_range", key="image", vmin=-1, vmax=1),
          dict(op="chat_caption", max_len=16, key="caption"),
          dict(op="keep", keys=["image", "tokens", "input_mask", "mask_ar", "mask_loss"])]
    c.data = dict(name="fake:clean", preprocess=pp)
    c.evals, c.eval = {}, dict(every_steps=0, batch_size=8)
    c.model = pw.paligemma_model_config(paligemma.config)["model"]
    c.model.lm["scan_layers"] = True
    c.init_from = dict(path=str(tmp_path / "hf"), format="hf_paligemma", include=".*")
    c.mesh, c.checkpoint = dict(data=1), dict(async_save=False)
    wd = str(tmp_path / "wd")
    train(c, wd, devices=jax.devices()[:1])

    out = str(tmp_path / "out")
    assert export_cli.main(["--workdir", wd, "--format", "hf_paligemma", "--out", out]) == 0
    back = transformers.PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    images, _, ids, token_type = paligemma_inputs(seed=3)
    ours_ids = np.where(ids == IMAGE_TOKEN, TEXT["vocab_size"], ids)  # the export's image id: the vocab size
    np.testing.assert_allclose(hf_paligemma_logits(back, images, ours_ids, token_type),
                               hf_paligemma_logits(paligemma, images, ids, token_type), atol=1e-4, rtol=0)
    want = flatten(pw.load_hf_paligemma(out))
    # the folder loads back into vlmjax (its config and tokenizer beside HF's files), scanned LM as the run has it
    import vlmjax

    run, back = vlmjax.load(wd), vlmjax.load(out)
    got, ref = flatten(back.variables["params"]), flatten(run.variables["params"])
    assert "lm/blocks/attn/q_kernel" in ref and sorted(got) == sorted(ref)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert back.answer(image, "example", max_new_tokens=4) == run.answer(image, "example", max_new_tokens=4)
    same = {k: v for k, v in run.config.to_dict().items() if k != "tokenizer"}
    assert {k: v for k, v in back.config.to_dict().items() if k != "tokenizer"} == same
    with open(run.config.tokenizer, "rb") as a, open(back.config.tokenizer, "rb") as b:
        assert a.read() == b.read()
    npz = str(tmp_path / "run.npz")
    assert export_cli.main(["--workdir", wd, "--format", "big_vision_paligemma", "--out", npz]) == 0
    got = flatten(pw.load_big_vision_paligemma(npz))
    assert sorted(got) == sorted(want) and all(np.allclose(got[k], want[k], atol=1e-6) for k in want)
    assert export_cli.main(["--workdir", wd, "--format", "hf_gemma", "--out", str(tmp_path / "lm")]) == 0
    lm = flatten(gw.load_hf_gemma(str(tmp_path / "lm")))
    assert all(np.allclose(lm[k], want[f"lm/{k}"], atol=1e-6) for k in lm) and len(lm) == len(
        [k for k in want if k.startswith("lm/")])
