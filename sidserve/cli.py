"""The `sidserve` command: a table of subcommands, each imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> (module with configure(parser) and run(args) -> exit code, one-line help).
# A ValueError or FileNotFoundError from run() is bad input: one line on stderr, exit 2.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train", "train the semantic indexer on a catalog and judgments"),
    "evaluate": ("training.evaluate", "measure a method on a catalog and judgments"),
    "assign": ("training.assign", "write the item -> SID table of a catalog"),
    "export": ("export.command", "turn a checkpoint into a servable bundle (ONNX + item table)"),
    "load-items": ("service.load_items", "bulk-load a bundle's item SIDs into Redis"),
    "serve": ("service.command", "run the gateway on a bundle"),
}


def main(argv: Sequence[str] | None = None) -> int:
    own_process = argv is None  # the process's own command line: a command may restart it
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sidserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # only the chosen subcommand's module (and its dependencies) gets imported
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    module = importlib.import_module(SUBCOMMANDS[chosen][0]) if chosen else None
    for name, (_, text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if module is not None and name == chosen:
            module.configure(p)
    args = parser.parse_args(argv)  # no known subcommand: argparse prints usage and exits
    args.own_process = own_process
    assert module is not None
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.run(args))
    except (ValueError, FileNotFoundError) as exc:  # bad input (DataError is a ValueError)
        print(f"sidserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
