"""`vlmjax-export`: a trained run's weights in another library's format.

    vlmjax-export --workdir workdirs/siglip_b16 --format hf_siglip --out siglip_hf/
    python -c "import transformers; transformers.SiglipModel.from_pretrained('siglip_hf')"
    vlmjax-export --workdir workdirs/siglip_scenes --format big_vision --out siglip_scenes.npz

`hf_siglip`: a contrastive run as a HF transformers `SiglipModel` folder (`model.safetensors` + `config.json`,
vlmjax/models/two_towers.py), for runs whose towers HF's SigLIP can express (MAP-head ViT with a learned
position table, text pooled at the last position without a padding mask: `experiments/siglip_b16.py`); another
run fails with one line naming the config key. The tokenizer is not converted to a HF tokenizer; the folder also
holds the run's config and SentencePiece model (`vlmjax_config.json`, `vlmjax_spm.model`), so that
`vlmjax.load(folder)` gives the run back with its verbs.
`big_vision`: the two towers' params in one `.npz` under the names of big_vision's released SigLIP checkpoints
('params/img/Transformer/encoderblock_0/...', layers unrolled), which `config.init_from` (format 'big_vision') reads.
Exit code 2 on bad input.
"""
import argparse
import os
import sys

FORMATS = ("hf_siglip", "big_vision")


def export(workdir: str, fmt: str, out: str, step: int = None) -> list:
    """Writes the run's checkpoint `step` (default: latest) to `out` in format `fmt`; returns the written paths."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    from vlmjax.api import load_task
    from vlmjax.models import foreign
    from vlmjax.cli.evaluate import load_run_config

    raw = load_run_config(workdir)
    if raw.get("task") != "contrastive":
        raise ValueError(f"--workdir {workdir!r}: config.task={raw.get('task')!r}; --format {fmt} exports a "
                         f"contrastive run")
    foreign.check_exportable(raw.model, fmt)  # before the checkpoint is read
    task, variables, _ = load_task(workdir, ("contrastive",), keys=("params",), step=step)
    if fmt == "big_vision":
        return foreign.export(fmt, variables["params"], task.config.model, out)
    from vlmjax.api import save_export_config

    return foreign.export(fmt, variables["params"], task.config.model, out) + save_export_config(
        task.config, out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmjax-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a vlmjax-train workdir")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="hf_siglip: transformers SiglipModel folder; big_vision: two-towers .npz")
    p.add_argument("--out", required=True, help="hf_siglip: output folder (created); big_vision: .npz file")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every restore step
    try:
        paths = export(args.workdir, args.format, args.out, args.step)
    except (ValueError, FileNotFoundError, OSError) as e:
        if os.environ.get("VLMJAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(paths))
    return 0


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
