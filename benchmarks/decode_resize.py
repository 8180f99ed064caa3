"""A `decode` then a `resize` of one image run as one op (`get_preprocess_fn` fuses them: the decoded PIL image is
resized as it is) against the two ops apart (a numpy copy out of PIL and back in between), on generated JPEGs, in
interleaved pairs. Timed in process CPU seconds (`time.process_time`), which a busy machine moves far less than
wall time; both are single-threaded. The pixels are compared too (they must be equal).

Run: .venv/bin/python benchmarks/decode_resize.py [--n 256] [--pairs 5]
Writes benchmarks/results/decode_resize.json (command, commit; images per CPU second of each per pair, the median
ratio, and whether every image's pixels were equal).
"""
import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import per_cpu_second, write_result  # noqa: E402
from seeds import provenance  # noqa: E402

# (name, JPEG sides in px, the image ops): siglip_b16's evaluation decode of COCO-sized photos (draft_size, as
# experiments/common.py's image_pp(224, draft=True) writes it), and a full decode of images near the target size.
CASES = (("coco_sized_draft_224", (480, 640), [dict(op="decode", draft_size=224), dict(op="resize", size=224)]),
         ("jpeg_224_320", (224, 320), [dict(op="decode"), dict(op="resize", size=224)]))


def rate(fn, images, repeats: int) -> float:
    """Images per CPU second of `fn` over `images`, best of `repeats` after one warm-up pass."""
    return per_cpu_second(lambda: [fn(ex, None) for ex in images], len(images), repeats)


def bench_case(name, sides, specs, args, tmp) -> dict:
    import numpy as np

    import generated_data
    from vlmjax.data.ops import get_preprocess_fn

    source = generated_data.jpeg_caption_records(os.path.join(tmp, f"{name}.bin"), args.n, seed=1, sides=sides)
    images = [{"image": source[i]["image"]} for i in range(args.n)]
    fns = {"fused": get_preprocess_fn(specs), "apart": get_preprocess_fn(specs, fuse=False)}
    equal = all(np.array_equal(fns["fused"](ex, None)["image"], fns["apart"](ex, None)["image"]) for ex in images)
    pairs = [{k: round(rate(fn, images, args.repeats)) for k, fn in fns.items()} for _ in range(args.pairs)]
    ratio = statistics.median(p["fused"] / p["apart"] for p in pairs)
    print(f"{name}: fused {ratio:.3f}x apart (images per CPU second, per pair: {pairs}); pixels equal: {equal}",
          flush=True)
    return {"case": name, "jpeg_sides_px": list(sides), "preprocess": specs, "images": args.n,
            "pairs_images_per_cpu_s": pairs, "median_ratio_fused_over_apart": round(ratio, 3),
            "pixels_equal": equal}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = [bench_case(*case, args, tmp) for case in CASES]
    path = write_result("decode_resize", {**provenance(__file__), "cases": cases,
                                          "timing": "process CPU seconds, best of --repeats passes per pair"})
    print(f"wrote {path}")
    return 0 if all(c["pixels_equal"] for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
