"""The one way ``farm`` and ``farm-worker`` turn a module per subcommand into an argparse parser."""

import argparse
import importlib
from collections.abc import Mapping


def add_subcommands(
    parser: argparse.ArgumentParser, modules: Mapping[str, str], dest: str, metavar: str
) -> None:
    """A subparser per ``{name: module}``: the module's docstring is its description (the first line its
    help), its ``add_arguments(parser)`` its options; the parsed arguments carry the module as
    ``module`` (the caller runs ``args.module.run(...)``)."""
    subparsers = parser.add_subparsers(dest=dest, required=True, metavar=metavar)
    for name, module_name in modules.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or name).strip().splitlines()[0]
        subparser = subparsers.add_parser(name, help=summary, description=module.__doc__)
        module.add_arguments(subparser)
        subparser.set_defaults(module=module)
