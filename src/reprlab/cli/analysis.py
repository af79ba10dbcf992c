"""``reprlab analyze cka``: how alike a model's layers are (and two models' layers), with blocks and PC1 shares."""

from __future__ import annotations

import json
import logging
import time

from reprlab.cli.options import add_config_options, config_from_args
from reprlab.cli_format import print_table
from reprlab.io import check_output

logger = logging.getLogger("reprlab")


def cmd_cka(args) -> None:
    from reprlab.analysis.cka_report import analyse, write_report

    config = config_from_args(args.options, args)
    check_output(config.output_dir, "folder")
    t0 = time.time()
    report = analyse(config)
    paths = write_report(report, config.output_dir)
    logger.info(f"analyze cka: {report.examples} examples in {report.batches} minibatches of {config.batch_size}, "
                f"{time.time() - t0:.1f}s -> {', '.join(str(p) for p in paths)}")
    if args.json:
        print(json.dumps(report.to_dict()))
        return
    for tag, m in zip("AB", report.models):
        in_block = {i: f"{b['start']}-{b['end']}" for b in m["blocks"] for i in range(b["start"], b["end"] + 1)}
        print(f"model {tag}: {m['name']} ({m['kind']}); {len(m['blocks'])} block(s) at CKA >= {config.threshold} "
              f"holding {m['layers_in_blocks']} of {len(m['layers'])} layers")
        rows = [{"layer": i, "module": name, "PC1 share": f"{pc:.3f}",
                 "CKA with next": f"{m['cka'][i][i + 1]:.3f}" if i + 1 < len(m["layers"]) else "",
                 "block": in_block.get(i, "")} for i, (name, pc) in enumerate(zip(m["layers"], m["pc1_fraction"]))]
        print_table(rows, ["layer", "module", "PC1 share", "CKA with next", "block"])
        print()
    if report.cross is not None:
        cross = report.cross
        diag = [cross[i][i] for i in range(min(len(cross), len(cross[0])))]
        print("CKA across the models, layer i of A with layer i of B: " + " ".join(f"{v:.3f}" for v in diag))


def add_commands(sub) -> None:
    from reprlab.analysis.cka_report import CKAConfig

    group = sub.add_parser("analyze", help="representation analyses of trained models")
    names = group.add_subparsers(dest="recipe", required=True, parser_class=type(group))
    p = names.add_parser("cka", help="layer x layer CKA of one model, or of two and across them (Nguyen et al. "
                         "2021): heatmaps, PC1 shares, blocks",
                         description="Minibatch CKA (unbiased HSIC) between every pair of layers of one model, or of "
                         "two models and across them, on a data set; writes OUT/cka.json and heatmap PNGs.")
    p.add_argument("--model", dest="models", action="append", required=True, metavar="MODEL",
                   help="a model folder (ResNet, text encoder) or 'minilm'; give --model twice to compare two models")
    p.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    options = add_config_options(p, CKAConfig)
    options.flags["models"] = "--model"  # an option of its own (given once per model), set from the same field
    p.set_defaults(func=cmd_cka, options=options)
