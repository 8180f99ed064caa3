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
`hf_paligemma` / `hf_gemma` / `big_vision_paligemma`: a prefix-LM run as a HF `PaliGemmaForConditionalGeneration`
folder (with the run's config and SentencePiece model, as `hf_siglip`: `vlmjax.load(folder)` answers as the run
did), its LM alone as a `GemmaForCausalLM` folder, or a big_vision PaliGemma `.npz`
(vlmjax/models/paligemma_weights.py, docs/prefixlm.md).
Exit code 2 on bad input.
"""
import sys

from absl import flags

from vlmjax.cli import app

PROG = "vlmjax-export"
FORMATS = ("hf_siglip", "big_vision", "hf_paligemma", "hf_gemma", "big_vision_paligemma")
TASK_OF = {"hf_paligemma": "prefixlm", "hf_gemma": "prefixlm", "big_vision_paligemma": "prefixlm"}  # else contrastive
FLAGS = app.new_flags()
flags.DEFINE_string("workdir", None, "A vlmjax-train workdir.", flag_values=FLAGS)
flags.DEFINE_enum("format", None, list(FORMATS), "hf_siglip: transformers SiglipModel folder; big_vision: "
                  "two-towers .npz; hf_paligemma / hf_gemma: transformers PaliGemma / Gemma folder (a prefix-LM run); "
                  "big_vision_paligemma: PaliGemma .npz.", flag_values=FLAGS)
flags.DEFINE_string("out", None, "hf_*: output folder (created); big_vision*: .npz file.", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=FLAGS)


def export(workdir: str, fmt: str, out: str, step: int = None) -> list:
    """Writes the run's checkpoint `step` (default: latest) to `out` in format `fmt`; returns the written paths."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    from vlmjax.api import EXPORT_FORMATS, load_run, load_run_config, save_export_config
    from vlmjax.models import foreign

    raw = load_run_config(workdir)
    kind = TASK_OF.get(fmt, "contrastive")
    if raw.get("task") != kind:
        raise ValueError(f"--workdir {workdir!r}: config.task={raw.get('task')!r}; --format {fmt} exports a "
                         f"{kind} run")
    foreign.check_exportable(raw.model, fmt)  # before the checkpoint is read
    task, variables, _ = load_run(workdir, (kind,), keys=("params",), step=step)
    paths = foreign.export(fmt, variables["params"], task.config.model, out)
    return paths + (save_export_config(task.config, out) if fmt in EXPORT_FORMATS.values() else [])


def export_main(_) -> int:
    paths = export(FLAGS.workdir, FLAGS.format, FLAGS.out, FLAGS.step)
    print("wrote " + ", ".join(paths))
    return 0


def main(argv=None) -> int:
    # orbax logs every restore step
    return app.run(PROG, __doc__, FLAGS, export_main, argv, required=("workdir", "format", "out"),
                   log_level="error")


def run():
    sys.exit(main())


if __name__ == "__main__":
    run()
