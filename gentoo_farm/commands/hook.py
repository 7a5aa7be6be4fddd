"""Print the git post-receive hook that makes a push to a recipe repository build at once."""

import argparse
from pathlib import Path

from gentoo_farm.config import FarmConfig
from gentoo_farm.farmdir import HOOK_USER, FarmDir
from gentoo_farm.recipes import (
    KERNEL_POLLER,
    OVERLAY_POLLER,
    RecipeRepository,
    recipe_repositories,
    recipe_repository,
)

HOOK_TEMPLATE = """#!/bin/sh
# gentoo-farm: knock the build master's poller so a push is built at once.
# A lost knock only delays the build: the master polls this repository anyway.
url='{url}'
secret_file="{secret_file}"
# git hands the pushed refs on stdin; the farm builds one branch, so only a push to it is news.
revision=
while read -r _ new ref; do
    if [ "$ref" = 'refs/heads/{branch}' ]; then revision=$new; fi
done
if [ -z "$revision" ]; then
    echo "gentoo-farm: nothing to build: the farm builds {branch} of this repository, not what was pushed"
    exit 0
fi
short=$(printf %.12s "$revision")
if ! secret=$(cat "$secret_file" 2>/dev/null); then
    echo "gentoo-farm: cannot read $secret_file; the master builds $short at its next poll" \\
        "(within {interval} s)" >&2
    exit 0
fi
if printf 'user = "{user}:%s"\\n' "$secret" |
        curl --config - -fsS --max-time 10 -X POST "$url" >/dev/null; then
    echo "gentoo-farm: the master took the notification: its {poller} poller fetches {branch} ($short)" \\
        "now and starts a build if the push changes what the farm builds from; follow it at {builders}"
else
    # Said as a command to paste: the master may have been down for a moment (farm up restarts it).
    cat >&2 <<EOF
gentoo-farm: could not notify $url; the master builds $short at its next poll (within {interval} s).
gentoo-farm: to have it built now, run on this server:
  printf 'user = "{user}:%s"\\n' "\\$(cat "$secret_file")" | curl --config - -fsS -X POST '$url'
EOF
fi
"""


def render_hook(config: FarmConfig, repository: RecipeRepository, secret_file: str) -> str:
    """The hook script; ``secret_file`` is expanded by the shell, so it may use $HOME."""
    url = f"{config.master.buildbot_url}change_hook/poller?poller={repository.poller}"
    return HOOK_TEMPLATE.format(
        url=url,
        secret_file=secret_file,
        user=HOOK_USER,
        branch=repository.branch,
        poller=repository.poller,
        interval=repository.poll_interval,
        builders=f"{config.master.buildbot_url}#/builders",
    )


def install_local_hooks(config: FarmConfig) -> None:
    """(Re)write the hooks of recipe repositories on this machine, so they knock the current URL."""
    for repository in recipe_repositories(config):
        hooks = Path(repository.url) / "hooks"
        if hooks.is_dir():
            post_receive = hooks / "post-receive"
            post_receive.write_text(render_hook(config, repository, str(FarmDir(config.basedir).hook_secret)))
            post_receive.chmod(0o755)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="hook_action", required=True, metavar="ACTION")
    print_parser = sub.add_parser("print", help="print the post-receive hook for a remote repository")
    print_parser.add_argument(
        "repository",
        choices=[KERNEL_POLLER, OVERLAY_POLLER],
        help="which recipe repository the hook is for",
    )
    print_parser.add_argument(
        "--secret-file",
        default="$HOME/.config/gentoo-farm/change-hook.secret",
        help="where the hook reads the change hook password on the git server",
    )


def run(args: argparse.Namespace, config: FarmConfig) -> int:
    print(render_hook(config, recipe_repository(config, args.repository), args.secret_file), end="")
    print(
        f"# Install as hooks/post-receive (chmod +x) in the repository on the git server and copy\n"
        f"# {FarmDir(config.basedir).hook_secret} to {args.secret_file} there (mode 0600).\n",
        end="",
    )
    return 0
