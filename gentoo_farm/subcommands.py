"""The one way ``farm`` and ``farm-worker`` turn a module per subcommand into an argparse parser.

Only the chosen subcommand's module is imported: ``farm images`` must not pay for what ``farm check``
imports (openstacksdk, Buildbot's worker classes: more than a second), and the one-line summaries that
``--help`` lists are read from each module's source.
"""

import argparse
import ast
import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser that imports its module, and adds the module's options, when it parses."""

    def __init__(self, *args: Any, module_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._module_name = module_name
        self._loaded = False

    def add_subparsers(self, **kwargs: Any) -> Any:
        # A command's own subcommands (`farm hook print`) are plain parsers: argparse would make them this
        # class, the parser's own, which needs a module to load.
        kwargs.setdefault("parser_class", argparse.ArgumentParser)
        return super().add_subparsers(**kwargs)

    def parse_known_args(  # type: ignore[override]  # one signature for typeshed's three overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if not self._loaded:
            module = importlib.import_module(self._module_name)
            self.description = module.__doc__
            module.add_arguments(self)
            self.set_defaults(module=module)
            self._loaded = True
        return super().parse_known_args(args, namespace)


def module_summary(module_name: str) -> str | None:
    """The first line of a module's docstring, from its source (the module is not imported)."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module named {module_name!r}", name=module_name)
    docstring = ast.get_docstring(ast.parse(Path(spec.origin).read_bytes()))
    return docstring.strip().splitlines()[0] if docstring else None


def add_subcommands(
    parser: argparse.ArgumentParser, modules: Mapping[str, str], dest: str, metavar: str
) -> None:
    """A subparser per ``{name: module}``: the module's docstring is its description (the first line its
    help), its ``add_arguments(parser)`` its options; the parsed arguments carry the module as
    ``module`` (the caller runs ``args.module.run(...)``)."""
    subparsers = parser.add_subparsers(
        dest=dest, required=True, metavar=metavar, parser_class=_SubcommandParser
    )
    for name, module_name in modules.items():
        subparsers.add_parser(name, help=module_summary(module_name) or name, module_name=module_name)
