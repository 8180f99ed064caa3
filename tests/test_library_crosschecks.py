"""Our metrics and losses against the libraries users trust, on the same inputs (issue 16 item 6).

  CIDEr-D        vs pycocoevalcap's Cider (the coco-caption scorer; pre-tokenised text, so no Java tokenizer)
  PSNR, SSIM     vs scikit-image (float64) and dm-pix (JAX, float32), at several sizes and both value ranges we use:
                 [-1, 1] (data_range 2, the model's) and [0, 1] (data_range 1)
  CLIP, SigLIP   vs open_clip's ClipLoss / SigLipLoss

Each library is imported per test, so one that is not installed skips its tests and no others. pycocoevalcap,
dm-pix and scikit-image are in setup.py's `test` extra. open_clip is not: it requires torchvision, which does not
import beside the pinned CPU torch 2.13.0 of the `hf` extra (it needs torch 2.14.1 + torchvision 0.29.1, a CUDA build
of several GB); its test runs wherever the user's environment has a working open_clip.
"""
import numpy as np
import pytest

from vlmjax.losses import contrastive
from vlmjax.evaluators import cider as cider_lib
from vlmjax.losses import image_metrics


# -- CIDEr-D vs pycocoevalcap ---------------------------------------------------------------------------------------
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
RELATIONS = ["left of", "right of", "above", "below", "next to"]


def _caption(r, objs):
    """A pre-tokenised scene caption: lower case, no punctuation (what coco-caption's PTB tokenizer would give)."""
    (c1, s1), (c2, s2) = objs[0], objs[-1]
    form = r.randint(5)
    if form == 0:
        return f"a {c1} {s1} {r.choice(RELATIONS)} a {c2} {s2}"
    if form == 1:
        return f"there is a {c1} {s1} and a {c2} {s2}"
    if form == 2:  # repeated n-grams: "a red circle and a red circle"
        return f"a {c1} {s1} and a {c1} {s1} on a dark background"
    if form == 3:
        return f"{c1} {s1}"
    return f"a picture of a {c1} {s1} {r.choice(RELATIONS)} a {c2} {s2} {r.choice(RELATIONS)} a {c1} {s1}"


def _corpus(seed, n_images):
    """n_images images with 1-6 references each, and one hypothesis per image of a mixed kind."""
    r = np.random.RandomState(seed)
    hyps, refs = [], []
    for i in range(n_images):
        objs = [(COLOURS[r.randint(len(COLOURS))], SHAPES[r.randint(len(SHAPES))]) for _ in range(2)]
        rs = [_caption(r, objs) for _ in range(r.randint(1, 7))]
        kind = i % 6
        if kind == 0:  # one of its references verbatim
            h = rs[0]
        elif kind == 1:  # a caption of the same scene, not (necessarily) among the references
            h = _caption(r, objs)
        elif kind == 2:  # a wrong colour
            h = _caption(r, [(COLOURS[(COLOURS.index(objs[0][0]) + 1) % len(COLOURS)], objs[0][1]), objs[1]])
        elif kind == 3:  # degenerate repetition: clipping must cap its n-gram counts
            h = " ".join([objs[0][0], objs[0][1]] * r.randint(2, 6))
        elif kind == 4:  # a single word (no bigrams: length 0 in the penalty)
            h = objs[0][1]
        else:  # another image's scene
            h = _caption(r, [(COLOURS[r.randint(len(COLOURS))], SHAPES[r.randint(len(SHAPES))])] * 2)
        hyps.append(h)
        refs.append(rs)
    return hyps, refs


@pytest.mark.parametrize("seed,n_images", [(0, 1), (1, 7), (2, 60)])
def test_cider_d_matches_pycocoevalcap(seed, n_images):
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    hyps, refs = _corpus(seed, n_images)
    for t in hyps + [x for rs in refs for x in rs]:
        assert cider_lib.normalize(t) == t  # pre-tokenised, so our normaliser and their split() see the same words
    gts = {i: list(rs) for i, rs in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    theirs_mean, theirs = cider_mod.Cider().compute_score(gts, res)
    ours = cider_lib.cider_d_scores(hyps, refs)
    # Both are float64 sums of the same terms (math.log vs np.log, possibly another summation order): round-off is
    # ~1e-15 relative; 1e-12 leaves room for that and nothing else (a definitional change -- no clipping, another
    # length, idf or sigma -- moves scores in the second or third digit).
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert cider_lib.cider_d(hyps, refs) == pytest.approx(float(theirs_mean), rel=1e-12, abs=1e-12)
    if n_images > 1:  # the corpus is not degenerate: scores spread over (0, 10], some high, some low
        assert max(ours) > 1.0 and min(ours) < 0.5


# -- PSNR / SSIM vs scikit-image and dm-pix -------------------------------------------------------------------------
def _natural_pairs(seed, batch, h, w, lo, hi):
    """Smooth images with edges (low-frequency fields + a few flat rectangles on a flat background) and a degraded copy
    (blur + Gaussian noise, clipped to the range), float32[B, H, W, 3] in [lo, hi]."""
    r = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    xs = []
    for _ in range(batch):
        img = np.zeros((h, w, 3))
        for _ in range(4):
            fy, fx, ph = r.uniform(0.5, 3, 3)
            img += r.uniform(-0.2, 0.2, 3) * np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)[..., None]
        img += r.uniform(-0.5, 0.0, 3)  # a darkish background
        for _ in range(3):
            y0, x0 = r.randint(0, h - 4), r.randint(0, w - 4)
            img[y0:y0 + r.randint(3, h // 2 + 3), x0:x0 + r.randint(3, w // 2 + 3)] = r.uniform(-1, 1, 3)
        xs.append(np.clip(img, -1, 1))
    x = np.stack(xs)
    blur = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2)) / 5
    sigmas = np.linspace(0.02, 0.3, batch)[:, None, None, None]  # from near-identical to heavily degraded
    y = np.clip(blur + r.normal(0, 1, x.shape) * sigmas, -1, 1)
    scale = lambda a: (lo + (a + 1) / 2 * (hi - lo)).astype(np.float32)
    return scale(x), scale(y)


RANGES = [(-1.0, 1.0), (0.0, 1.0)]  # data_range 2 (the model's [-1, 1]) and 1
SIZES = [(11, 11), (16, 24), (64, 64)]  # the window's minimum, non-square, the 64 px scenes
IMAGE_CASES = [(h, w, lo, hi) for h, w in SIZES for lo, hi in RANGES]


@pytest.mark.parametrize("h,w,lo,hi", IMAGE_CASES)
def test_psnr_ssim_match_scikit_image(h, w, lo, hi):
    skm, dr = pytest.importorskip("skimage.metrics"), hi - lo
    x, y = _natural_pairs(h * 7 + w, 4, h, w, lo, hi)
    ours_p = np.asarray(image_metrics.psnr(x, y, data_range=dr))
    ours_s = np.asarray(image_metrics.ssim(x, y, data_range=dr))
    theirs_p = [skm.peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=dr)
                for a, b in zip(x, y)]
    # skimage with Wang et al.'s settings: Gaussian weights sigma 1.5 (scipy truncates at 3.5 sigma: 11 taps, as our
    # 11-tap window), population (not sample) covariances, K1/K2 0.01/0.03; it filters the reflect-padded image and
    # averages only positions (win-1)/2 away from the border, i.e. exactly our 'valid' positions.
    def sk_ssim(a, b, sample_covariance=False):
        return skm.structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=dr, channel_axis=-1,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=sample_covariance)

    theirs_s = [sk_ssim(a, b) for a, b in zip(x, y)]
    # PSNR: ours is a float32 mean of squares (relative error ~1e-6 on the mse, i.e. ~5e-6 dB); 1e-4 dB is two orders
    # above that and far below any real difference (a 1% mse change is 0.04 dB).
    np.testing.assert_allclose(ours_p, theirs_p, rtol=0, atol=1e-4)
    # SSIM: ours takes variances as float32 E[x^2] - mu^2, which loses ~1e-7 * E[x^2] against float64; next to
    # C2 = (0.03 * range)^2 >= 9e-4 that is < 1e-4 relative per pixel, and the image mean averages it down. 2e-5
    # absolute is below what a different convention moves: even the sample covariance (a 121/120 factor on every
    # (co)variance) moves it by ~2e-4 (asserted below); a different filter, border or constant by far more.
    np.testing.assert_allclose(ours_s, theirs_s, rtol=0, atol=2e-5)
    # The degradations span a real range, so agreement is not trivially at SSIM ~ 1.
    assert np.ptp(theirs_s) > 0.05 and min(theirs_s) < 0.9
    # The tolerance tells conventions apart: skimage's default, the sample covariance, is off by > 5x the tolerance
    # (on images larger than the window; at 11 x 11 there is one window position, which moves only ~1e-5).
    if h > 11:
        assert abs(sk_ssim(x[-1], y[-1], sample_covariance=True) - theirs_s[-1]) > 1e-4


@pytest.mark.parametrize("h,w,lo,hi", IMAGE_CASES)
def test_psnr_ssim_match_dm_pix(h, w, lo, hi):
    pix, dr = pytest.importorskip("dm_pix"), hi - lo
    x, y = _natural_pairs(h * 11 + w, 4, h, w, lo, hi)
    # dm-pix's SSIM: the same 11-tap sigma-1.5 separable Gaussian, 'valid' filtering, max_val = our data_range. It
    # also clips variances at eps^2 and |cov| at sigma_x sigma_y, which only acts on float32 round-off (< 1e-7,
    # against C2 >= 9e-4). Both are float32 JAX at HIGHEST precision, differing in convolution order only: 1e-5.
    np.testing.assert_allclose(image_metrics.ssim(x, y, data_range=dr), pix.ssim(x, y, max_val=dr),
                               rtol=0, atol=1e-5)
    # dm-pix's PSNR assumes a range of width 1 (-10 log10 mse); for range 2 it is ours minus 20 log10(2). Both float32
    # mse with a different reduction order: 1e-4 dB.
    np.testing.assert_allclose(image_metrics.psnr(x, y, data_range=dr),
                               np.asarray(pix.psnr(x, y)) + 20 * np.log10(dr), rtol=0, atol=1e-4)


# -- CLIP / SigLIP losses vs open_clip ------------------------------------------------------------------------------
def _import_open_clip_loss():
    """open_clip.loss, or skip: open_clip's package import needs torchvision, which beside a mismatched torch fails
    with a RuntimeError (operator torchvision::nms does not exist) rather than an ImportError."""
    torch = pytest.importorskip("torch")
    try:
        import open_clip.loss as oc_loss
    except Exception as e:  # noqa: BLE001 -- ImportError or torchvision's RuntimeError: either way not usable here
        pytest.skip(f"open_clip is not importable here: {type(e).__name__}: {e}")
    return torch, oc_loss


def _embeddings(seed, batch, dim):
    """L2-normalised image/text embeddings whose pairs are partly aligned (as mid-training), float32[B, D] x2."""
    r = np.random.RandomState(seed)
    zi = r.normal(size=(batch, dim))
    zt = 0.6 * zi + r.normal(size=(batch, dim))
    norm = lambda z: (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    return norm(zi), norm(zt)


# (batch, log temperature, bias): CLIP's init log(1/0.07), SigLIP's init log(10) / -10, a trained-ish log(100) / -12.
LOSS_CASES = [(8, np.log(1 / 0.07), 0.0), (32, np.log(10.0), -10.0), (64, np.log(100.0), -12.0)]


@pytest.mark.parametrize("batch,log_t,bias", LOSS_CASES)
def test_contrastive_losses_match_open_clip(batch, log_t, bias):
    torch, oc_loss = _import_open_clip_loss()
    zi, zt = _embeddings(batch, batch, 48)
    ti, tt = torch.from_numpy(zi), torch.from_numpy(zt)
    scale = torch.tensor(float(np.exp(log_t)), dtype=torch.float32)
    ours_clip, _ = contrastive.softmax_loss(zi, zt, np.float32(log_t))
    theirs_clip = oc_loss.ClipLoss()(ti, tt, scale)
    ours_sig, _ = contrastive.sigmoid_loss(zi, zt, np.float32(log_t), np.float32(bias))
    # open_clip's SigLipLoss takes the temperature as exp(t) already, like ClipLoss (its model exps logit_scale).
    theirs_sig = oc_loss.SigLipLoss()(ti, tt, scale, torch.tensor(float(bias), dtype=torch.float32))
    # Both float32: logits up to |100| with ~1e-7 relative error, summed over B^2 terms (SigLIP) or B logsumexps
    # (CLIP); 1e-5 relative covers that, while a definitional difference (mean vs sum over rows, one direction of the
    # CLIP loss, the bias sign) changes the loss by a factor or by O(1).
    assert float(ours_clip) == pytest.approx(float(theirs_clip), rel=1e-5, abs=1e-6)
    assert float(ours_sig) == pytest.approx(float(theirs_sig), rel=1e-5, abs=1e-6)
