"""Convert a whole-slide image to OME-Zarr: ``python pipelines/convert.py SRC DST [--chunk 512]
[--workers N]`` (the same as ``ram-wsi convert``; a mistake is one line, exit status 2)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ram_wsi.cli_args import guarded
from ram_wsi.commands.convert import parse_convert


def main(argv: list[str]) -> int:
    args = parse_convert(argv, prog="convert.py")
    from ram_wsi.slide.convert import run_convert

    return run_convert(args)


if __name__ == "__main__":
    raise SystemExit(guarded(main, sys.argv[1:], prog="convert.py"))
