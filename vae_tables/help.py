"""The command-line tools' help layout: each option's default where it tells the reader something."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse's ArgumentDefaultsHelpFormatter without its slips: it printed "(default: True)" for a --no-...
    switch (which is off unless given), "(default: None)" for options whose help says what leaving them out means,
    and a second default after a help text that states its own."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = (
            action.option_strings
            and not action.required
            and action.nargs != 0  # a switch: off unless given
            and action.default is not None
            and action.default is not argparse.SUPPRESS
            and "(default" not in text  # a help that states its own default, in its own words
        )
        if not shown:
            return text
        value = action.default
        value = ",".join(map(str, value)) if isinstance(value, tuple | list) else value  # as it is typed: 256,256
        return f"{text} (default: {str(value).replace('%', '%%')})"
