"""`dualanodiff official import|export`: the authors' checkpoints (pytorch_lora_weights.bin) in and out."""

from __future__ import annotations

import json

from ..checks import name_arg

_DESCRIPTION = """\
The authors of DualAnoDiff released their adapters as one state dict per anomaly type (pytorch_lora_weights.bin,
with or without BCM, text-encoder LoRA included).

  import  their file, or the directory holding it, -> an adapters folder of this project (adapters.safetensors,
          adapter_config.json) that `generate` uses like any other; the base must be the SD 1.5 they were
          trained on. BCM adapters record U^2-Net as their foreground source (the authors' masks came from it),
          so `generate` asks for --u2net-weights, or takes --foreground auto with a warning.
  export  an adapters folder -> OUT/pytorch_lora_weights.bin in their layout, key for key, for their scripts.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "official",
        help="import the authors' released checkpoints, or export adapters for their scripts",
        description=_DESCRIPTION,
    )
    modes = p.add_subparsers(dest="mode", metavar="<mode>", required=True)

    imp = modes.add_parser("import", help="their checkpoint -> an adapters folder")
    imp.add_argument("checkpoint", help="pytorch_lora_weights.bin, or the directory that holds it")
    imp.add_argument(
        "--base", required=True, help="the SD 1.5 base they were trained on: hub id or local folder"
    )
    imp.add_argument("--out", required=True, help="adapters folder to write")
    imp.add_argument(
        "--category",
        type=name_arg,
        help="recorded for `generate` (its official-code preset treats screw apart)",
    )
    imp.add_argument("--anomaly", type=name_arg, help="anomaly type, recorded in the generated manifests")
    imp.set_defaults(func=run_import)

    exp = modes.add_parser("export", help="an adapters folder -> their pytorch_lora_weights.bin")
    exp.add_argument(
        "--adapters", required=True, help="a folder written by `dualanodiff train` or `official import`"
    )
    exp.add_argument("--base", required=True, help="the base the adapters were trained on")
    exp.add_argument("--out", required=True, help="directory to write pytorch_lora_weights.bin into")
    exp.add_argument(
        "--safetensors",
        action="store_true",
        help="write pytorch_lora_weights.safetensors instead (no pickle)",
    )
    exp.set_defaults(func=run_export)


def run_import(args) -> int:
    from ..checks import check_output_dir
    from ..model.official import convert_official_state_dict, find_official_checkpoint, read_state_dict_file
    from ..pipeline import DualAnoDiffPipeline

    check_output_dir(args.out)
    path = find_official_checkpoint(args.checkpoint)
    convert_official_state_dict(read_state_dict_file(path))  # a bad file: one line, before the base loads
    pipe = DualAnoDiffPipeline.from_pretrained(args.base)
    config = pipe.load_official_checkpoint(path)
    training = {
        "category": args.category,
        "anomaly": args.anomaly,
        "foreground": "u2net" if config.bcm else None,
        "imported_from": str(path),
    }
    out = pipe.save_adapters(args.out, extra={"training": training})
    print(json.dumps({"adapters": str(out), **config.to_dict()}, indent=2))
    return 0


def run_export(args) -> int:
    from ..checks import check_output_dir
    from ..model.dual_unet import read_adapter_config
    from ..pipeline import DualAnoDiffPipeline

    check_output_dir(args.out)
    read_adapter_config(args.adapters)  # a one-line error before the base loads
    pipe = DualAnoDiffPipeline.from_pretrained(args.base)
    pipe.load_adapters(args.adapters)
    print(pipe.save_official_checkpoint(args.out, safe_serialization=args.safetensors))
    return 0
