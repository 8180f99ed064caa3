"""Per-image reconstruction metrics (pure jnp, jit-able): PSNR and SSIM.

Both take images in the model's value range and its width `data_range` (2.0 for [-1, 1]); they are computed in
float32 with HIGHEST matmul/conv precision, because SSIM's variances are differences of nearly equal moments that
bf16 passes (the TPU default for float32 convs) would destroy.
"""
import jax
import jax.numpy as jnp

f32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST
# Wang, Bovik, Sheikh & Simoncelli (2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
# mse floor: identical images give 10 log10(range^2 / 1e-10) = 100 dB (range 1) instead of inf, so means stay finite.
MSE_FLOOR = 1e-10


def psnr(x, y, data_range: float = 2.0):
    """10 log10(data_range^2 / mse) per image: float[B, H, W, C] x2 -> float32[B]."""
    d = x.astype(f32) - y.astype(f32)
    mse = jnp.mean(jnp.square(d), axis=tuple(range(1, d.ndim)))
    return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, MSE_FLOOR * data_range ** 2))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA):
    """Normalised 1-D Gaussian: float32[size] summing to 1."""
    t = jnp.arange(size, dtype=f32) - (size - 1) / 2.0
    g = jnp.exp(-0.5 * jnp.square(t / sigma))
    return g / jnp.sum(g)


def _filter_valid(x, g):
    """Separable 'valid' Gaussian filtering of each channel: float32[B, H, W, C] -> float32[B, H-k+1, W-k+1, C]."""
    c, k = x.shape[-1], g.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    rows = jnp.tile(g.reshape(k, 1, 1, 1), (1, 1, 1, c))  # depthwise: one copy of the window per channel
    cols = jnp.tile(g.reshape(1, k, 1, 1), (1, 1, 1, c))
    x = jax.lax.conv_general_dilated(x, rows, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c,
                                     precision=HIGHEST)
    return jax.lax.conv_general_dilated(x, cols, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c,
                                        precision=HIGHEST)


def ssim(x, y, data_range: float = 2.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA):
    """Mean SSIM per image (Wang et al. 2004): float[B, H, W, C] x2 -> float32[B], 1 for identical images.

    SSIM map = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) with Gaussian-weighted
    local moments (weights sum to 1, i.e. no sample-size correction), C_i = (K_i * data_range)^2; averaged over the
    valid (unpadded) window positions and the channels. Same convention as skimage's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
    """
    if x.shape[1] < window or x.shape[2] < window:
        raise ValueError(f"ssim: images {x.shape[1:3]} are smaller than the {window}x{window} window")
    x, y = x.astype(f32), y.astype(f32)
    g = gaussian_window(window, sigma)
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    s_xx = _filter_valid(x * x, g) - mu_x * mu_x
    s_yy = _filter_valid(y * y, g) - mu_y * mu_y
    s_xy = _filter_valid(x * y, g) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * s_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (s_xx + s_yy + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))


def to_uint8(images):
    """float[..., 3] in [-1, 1] -> uint8 (clipped, rounded): what a PNG of the image holds."""
    return jnp.round((jnp.clip(images.astype(f32), -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)
