"""Deserialising tfds records: vlmjax's direct decoder (`vlmjax/data/sources/example_decoder.py`) against tfds'
`deserialize_example_np`, on the same batched reads of the same source, in interleaved pairs. Timed in process CPU
seconds (`time.process_time`), which a busy machine moves far less than wall time: both readers are single-threaded
Python, so CPU time is what a worker process spends per record.

Run: .venv/bin/python benchmarks/record_decode.py [--data_dir data/tfds] [--batch 512] [--pairs 5]
Writes benchmarks/results/record_decode.json (command, commit; records per CPU second of each reader per pair, the
median ratio).
The `scenes/raw` and `scenes` datasets must be built (`make bench` builds them).
"""
import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import per_cpu_second, write_result  # noqa: E402
from seeds import provenance  # noqa: E402

CASES = (("scenes/raw", ["image", "captions"]),  # the 32 px contrastive study's reads
         ("scenes/raw", ["image", "label"]),
         ("scenes", ["image", "captions"]),  # PNG bytes, left encoded
         ("scenes", []))  # every field: what a preprocess without a final `keep` reads


def rate(read, indices, repeats: int) -> float:
    """Records per CPU second of `read(indices)`, best of `repeats` after one warm-up."""
    return per_cpu_second(lambda: read(indices), len(indices), repeats)


def bench_case(name: str, features: list, args) -> dict:
    import ml_collections

    from vlmjax.data.pipeline import make_source

    src = make_source(ml_collections.ConfigDict(dict(name=name, data_dir=args.data_dir, read_features=features)),
                      "train")
    direct = src._fast
    assert direct is not None, f"{name} {features}: not covered by the direct decoder"
    pairs = []
    for p in range(args.pairs):  # a new slice of the split per pair: no pair reads records another has cached
        indices = list(range(p * args.batch, (p + 1) * args.batch))
        src._fast = None
        tfds_rate = rate(src.__getitems__, indices, args.repeats)
        src._fast = direct
        pairs.append({"tfds": round(tfds_rate), "direct": round(rate(src.__getitems__, indices, args.repeats))})
    ratio = statistics.median(p["direct"] / p["tfds"] for p in pairs)
    print(f"{name} {features}: direct {ratio:.2f}x tfds (records per CPU second, per pair: {pairs})", flush=True)
    return {"dataset": name, "read_features": features, "pairs_records_per_cpu_s": pairs,
            "median_ratio_direct_over_tfds": round(ratio, 3)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=os.path.join(os.path.dirname(HERE), "data", "tfds"))
    p.add_argument("--batch", type=int, default=512, help="records per batched read (the study's batch)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--note", default="", help="what else ran on the machine")
    args = p.parse_args(argv)
    result = {**provenance(__file__, argv), "batch": args.batch, "cpu_cores": os.cpu_count(), "note": args.note,
              "cases": [bench_case(name, feats, args) for name, feats in CASES]}
    write_result("record_decode", result)


if __name__ == "__main__":
    main()
