"""``killswitch release``: publish a release that lifts accounts' halt latch and follow
it to the ``released`` result (exit code 3 when an account was not halted)."""

from __future__ import annotations

import argparse

from killswitch.commands.prepare import add_publish_arguments, add_target_arguments
from killswitch.commands.trigger import publish_command

__all__ = ["add_arguments_release", "cli_release"]


def add_arguments_release(parser: argparse.ArgumentParser) -> None:
    """Options of ``killswitch release``."""
    parser.description = (
        "Publish a release that lifts the halt latch of accounts and wait for the "
        "'released' result. Exit 0 only when every account is released; 3 when an "
        "account was not halted (the release did nothing there)."
    )
    add_target_arguments(parser)
    parser.add_argument("-r", "--reason", default="released by operator", help="why")
    add_publish_arguments(parser)


def cli_release(args: argparse.Namespace) -> int:
    """``killswitch release``: publish a release and follow it to the ``released`` result."""
    return publish_command(args, "release")
