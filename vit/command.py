"""What every command of the project shares: ``--version``, help texts that show defaults
and read as plain text, and the closest valid name for a misspelt one (stdlib only)."""

from __future__ import annotations

import argparse
import difflib
import os
import re
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "vit-service"

# reStructuredText roles and literals as module docstrings write them: :mod:`x`, ``x``, `x`
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def package_version() -> str:
    """The installed version of the project (``0+unknown`` when run from a bare checkout)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def plain(text: str) -> str:
    """``text`` without reStructuredText markup: ``:mod:`x``` and ````x```` become ``x``."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


def description(doc: str | None) -> str:
    """The first paragraph of a module docstring, as plain text for ``--help``."""
    return plain((doc or "").split("\n\n")[0]).strip()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unless its help already says it) and keeps the
    description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """``argparse`` that reports a bad command line in one line (no usage block) and names
    the closest valid option for a misspelt one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            options = [s for a in self._actions for s in a.option_strings]
            hints = []
            for token in message.split(":", 1)[1].split():
                near = closest(token.split("=")[0], options) if token.startswith("-") else None
                if near:
                    hints.append(near)
            if hints:
                message += f" (did you mean {', '.join(hints)}?)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser(prog: str, doc: str | None, **kwargs: object) -> argparse.ArgumentParser:
    """An ``argparse`` parser with the project's help formatter, the first paragraph of
    ``doc`` as its description, ``--version`` and a suggestion for a misspelt option."""
    p = Parser(prog=prog, description=description(doc), formatter_class=HelpFormatter,
               **kwargs)  # type: ignore[arg-type]
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return p


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name nearest to a misspelt ``name``, or ``None`` when none is close."""
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def file_mode(replacing: str | Path | None = None) -> int:
    """The permission bits for a file a command writes: those of the file it replaces, else
    what the umask allows (a temporary file starts at 0600)."""
    if replacing is not None and Path(replacing).is_file():
        return Path(replacing).stat().st_mode & 0o7777
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def dir_mode() -> int:
    """The permission bits for a folder a command writes: what the umask allows (a
    temporary folder starts at 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask
