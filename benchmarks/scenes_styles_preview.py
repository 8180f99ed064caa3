"""Preview of the `scenes` rendering styles: the same test scenes in each of `STYLES` (one row a scene, one column a
style; the objects and captions are the same along a row). No dataset build needed. Regenerates docs/scenes_styles.png:

    .venv/bin/python benchmarks/scenes_styles_preview.py                     # 4 scenes, 64 px
    .venv/bin/python benchmarks/scenes_styles_preview.py --n 2 --out /tmp/p.png
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vlmjax.data.scenes import STYLES, captions, record_seed, render_scene  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="number of scenes (the first test records)")
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "scenes_styles.png"))
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(args.n, len(STYLES), figsize=(1.6 * len(STYLES) + 2.2, 1.6 * args.n + 0.5), squeeze=False)
    for row in range(args.n):
        seed = record_seed("test", row, args.image_size)
        for col, style in enumerate(STYLES):
            img, objs = render_scene(seed, args.image_size, style)
            ax = axes[row, col]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(style + (" (held out)" if style == "texture" else ""), fontsize=10)
            if col == 0:
                ax.set_ylabel(f"test {row}", fontsize=9)
        axes[row, -1].text(1.04, 0.5, captions(objs)[0], transform=axes[row, -1].transAxes, fontsize=7,
                           va="center", wrap=True)
    fig.suptitle("scenes: one scene per row in each rendering style (caption on the right)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
