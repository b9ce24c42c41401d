"""Write kdbench/estimate/model_flops.csv: forward FLOPs per image of every registered model at its default input.

One row per (model, classes) for 10, 100 and 1000 classes, counted with torch.utils.flop_counter on one CPU image
(kdbench.estimate.flops.count_forward_flops: eval mode, the math attention kernel so that attention is counted).
The plan's cost estimate (kdbench.estimate) reads this table instead of building models; models that are not in
it are counted on the fly. Run it again when a model is added or changed:

    python benchmarks/model_flops.py            # a minute or two on a 2-core CPU
    python benchmarks/model_flops.py --check    # recount and compare with the shipped table, write nothing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from kdbench.estimate.flops import TABLE_CLASSES, TABLE_COLUMNS, count_forward_flops, flops_table
from kdbench.models import model_info, model_names

TABLE = Path(__file__).resolve().parents[1] / "kdbench" / "estimate" / "model_flops.csv"


def rows() -> list[tuple[str, int, int, int, float]]:
    """(arch, in_channels, input_size, num_classes, forward FLOPs) of every model × TABLE_CLASSES."""
    found = []
    for arch in model_names(include_unlisted=True):
        info = model_info(arch)
        for classes in TABLE_CLASSES:
            flops = count_forward_flops(arch, classes, info.input_size, info.in_channels)
            found.append((arch, info.in_channels, info.input_size, classes, flops))
            print(f"{arch:<16} {info.in_channels}×{info.input_size}² {classes:>5} classes {flops / 1e9:9.4f} GFLOPs",
                  flush=True)
    return found


def main() -> int:
    """Write (or with --check, compare) the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the shipped table; exit 1 on a difference")
    args = parser.parse_args()
    counted = rows()
    if args.check:
        shipped = flops_table()
        differ = [row for row in counted if shipped.get(row[:4]) != row[4]]
        for row in differ:
            print(f"differs: {row[:4]}: shipped {shipped.get(row[:4])}, counted {row[4]}")
        return 1 if differ else 0
    lines = [f"# Forward FLOPs per image (2 per multiply-add; convolutions, matrix products, attention) of every "
             f"registered model at its default input, counted by torch.utils.flop_counter on one CPU image with "
             f"torch {torch.__version__}. Written by benchmarks/model_flops.py; do not edit by hand.",
             ",".join(TABLE_COLUMNS)]
    lines += [f"{arch},{channels},{size},{classes},{flops:.0f}" for arch, channels, size, classes, flops in counted]
    TABLE.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(counted)} rows to {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
