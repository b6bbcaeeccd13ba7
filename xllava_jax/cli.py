"""What every `python -m xllava_jax.<tool>` entry point shares: logging set-up, parsing, dispatch, the
one-line `error: ...` handler for user errors, and outputs that are written whole or not at all."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Iterator, Sequence

USER_ERROR_EXIT = 2
VERBOSE_FLAG = "--verbose"


class UserError(Exception):
    """A problem with what the user gave (a flag, a file, a config, a record): shown as one `error:` line.

    Modules above this floor subclass it (with ValueError etc. as a second base) for their own errors.
    """


SKIP_MEMORY_CHECK_ENV = "XLLAVA_SKIP_MEMORY_CHECK"  # set to 1: run a step even when the host looks too small


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (/proc/meminfo MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def require_host_memory(needed: int, what: str) -> None:
    """Raise UserError, before any work, when `what` needs more host memory than is available (unless
    XLLAVA_SKIP_MEMORY_CHECK=1)."""
    available = available_memory()
    if available is None or needed <= available or os.environ.get(SKIP_MEMORY_CHECK_ENV) == "1":
        return
    raise UserError(f"{what} needs about {needed / 1e9:.1f} GB of host memory but only {available / 1e9:.1f} GB "
                    f"is available (MemAvailable): free memory or use a bigger host, or set "
                    f"{SKIP_MEMORY_CHECK_ENV}=1 to try anyway")


# Exceptions that are about the user's paths rather than bugs in the code.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def is_user_error(e: BaseException) -> bool:
    """Whether `e` (or an exception it was raised from) is a user error rather than a bug."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, (UserError, *PATH_ERRORS)):
            return True
        seen.add(id(e))
        e = e.__cause__
    return False


def error_message(e: BaseException) -> str:
    """The message of a user error: the first user-error exception's text (path errors name their file)."""
    while e is not None and not isinstance(e, (UserError, *PATH_ERRORS)):
        e = e.__cause__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in str(e):
        return f"{e.strerror or e}: {e.filename}"
    text = str(e).strip()
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]  # KeyError's str() adds quotes
    return text or type(e).__name__


def pop_verbose(argv: Sequence[str] | None) -> tuple[list[str], bool]:
    """(argv without `--verbose`, whether it was there); argv None means sys.argv[1:]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [a for a in argv if a != VERBOSE_FLAG], VERBOSE_FLAG in argv


def guarded(fn: Callable[[], int | None], verbose: bool = False) -> int:
    """Run `fn()` and return its exit code; a user error prints `error: <message>` to stderr and returns 2
    (with the traceback only when `verbose`); anything else (a bug) propagates with its traceback."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
        if not is_user_error(e):
            raise
        if verbose:
            traceback.print_exc()
        print(f"error: {error_message(e)}", file=sys.stderr)
        return USER_ERROR_EXIT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help that keeps the description's layout and shows every flag's default (None: the help says)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def add_verbose(p: argparse.ArgumentParser) -> None:
    """The `--verbose` flag (parsed before argparse by pop_verbose; listed here for --help)."""
    p.add_argument(VERBOSE_FLAG, action="store_true", help="show the traceback of an error too")


def new_parser(prog: str, description: str | None, **kwargs) -> argparse.ArgumentParser:
    """An entry point's parser: defaults shown in --help, and --verbose (kwargs go to ArgumentParser)."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)
    add_verbose(p)
    return p


def add_subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Required subcommands whose parsers also show defaults in --help."""
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser = _with_formatter(sub.add_parser)
    return sub


def _with_formatter(add_parser: Callable) -> Callable:
    def add(*args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        p = add_parser(*args, **kwargs)
        add_verbose(p)
        return p
    return add


def run_subcommand(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None = None) -> int:
    """Parse `argv` with the tool's parser and run the chosen subcommand's `fn(args)`; returns its exit code
    (2 with a one-line `error:` for user errors, see guarded)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv, verbose = pop_verbose(argv)
    args = build_parser().parse_args(argv)
    return guarded(lambda: args.fn(args), verbose)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary directory next to `path` to write into; on success it replaces `path` in one rename
    (an existing `path` is removed only then), on any error it is deleted and `path` is left as it was."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output {path} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            path.rename(old / path.name)
        try:
            tmp.rename(path)
        except OSError:
            if old is not None:
                (old / path.name).rename(path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
