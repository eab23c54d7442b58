"""The ``concepts`` command line: one thin module per command, errors mapped to one line."""

from __future__ import annotations

import functools
import inspect
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from concepts.errors import ConceptsError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds (and cleans up) exactly like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    # A second SIGTERM must not interrupt the clean-up the first one started (SIGKILL still works).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so known errors become one line and an exit code (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Handlers can only be set from the main thread; a test runner may call from another one.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return _call(fn, args, kwargs)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _exiting() -> None:
    """Ignore SIGTERM while an error line is printed: torchrun stops a failed run's other ranks, and one may be reporting its own error."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _call(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run a command, mapping errors to one line, SIGINT to exit 130 and SIGTERM to exit 143."""
    try:
        return fn(*args, **kwargs)
    except ConceptsError as err:
        _exiting()
        if _state["debug"]:
            traceback.print_exc()
        hint = "" if _state["debug"] or err.exit_code == 2 else " (--debug shows the traceback)"
        typer.echo(f"error: {err}{hint}", err=True)
        raise typer.Exit(err.exit_code) from None
    except Terminated:
        typer.echo("terminated", err=True)
        raise typer.Exit(143) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is now (test runners swap it between runs)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


# typer's own plain-help labels (<list[str]>, <int range>) -> the click/typer convention.
_METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN", "path": "PATH",
             "file": "FILE", "directory": "DIRECTORY", "int range": "INTEGER", "float range": "FLOAT"}


def _metavar(param: Any, ctx: Any) -> str:
    """TEXT, INTEGER, PATH... for an option, [a|b|c] for a closed set of choices."""
    label = param.display_type(ctx).strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    if "|" in label or getattr(getattr(param, "type_descriptor", None), "is_choice", False):
        return f"[{label}]"
    return _METAVARS.get(label, label.upper())


def _argument_name(param: Any) -> str:
    name = (param.metavar or param.name or "").upper()
    if not param.required:
        name = f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")


# typer's vendored click.UsageError, which typer does not export under a public name.
_ClickUsageError: type[Exception] = typer.BadParameter.__mro__[1]


class _OneLineUsageError(_ClickUsageError):  # type: ignore[misc, valid-type]
    """A bad option or value as one ``error:`` line, exit 2, like every other usage error of the CLI."""

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {self.format_message()}", err=True)


class _Conventional:
    """Help in click's usual style: ``--size TEXT``, ``DATASET``, ``[ndlite|netdissect|global]``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except _ClickUsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # prints the help, not an error
                raise
            message = err.format_message().replace("Value error, ", "")  # type: ignore[attr-defined]
            raise _OneLineUsageError(message) from None

    def _label_options(self, ctx: Any) -> None:
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            if param.param_type_name == "option" and param.metavar is None and not (param.is_flag or param.count):
                param.metavar = _metavar(param, ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            pieces += [_argument_name(param)] if param.param_type_name == "argument" else param.get_usage_pieces(ctx)
        return pieces

    def _format_params(self, ctx: Any, formatter: Any) -> None:
        self._label_options(ctx)
        args, opts = [], []
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((_argument_name(param), record[1]))
            else:
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class _Command(_Conventional, TyperCommand):
    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        # An example command must not be rewrapped mid-command: click's "\b" marks it verbatim,
        # added here for any epilog paragraph that starts with a command line and lacks the marker.
        if not self.epilog:
            return
        paragraphs = inspect.cleandoc(self.epilog).split("\n\n")
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text("\n\n".join("\b\n" + p if p.lstrip().startswith("concepts ") else p for p in paragraphs))

    def format_options(self, ctx: Any, formatter: Any) -> None:
        self._format_params(ctx, formatter)


class _Group(_Conventional, TyperGroup):
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except _ClickUsageError as err:
            raise _OneLineUsageError(err.format_message()) from None  # type: ignore[attr-defined]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [*_Conventional.collect_usage_pieces(self, ctx), self.subcommand_metavar]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        self._format_params(ctx, formatter)
        self.format_commands(ctx, formatter)


_QUIET = Annotated[bool, typer.Option("--quiet", "-q", help="Only print errors (and no progress bars).")]
_VERBOSE = Annotated[bool, typer.Option("--verbose", "-v", help="Also print debug logs.")]


def _with_verbosity(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add -q/--quiet and -v/--verbose to a command, so they work after the command name too."""
    signature = inspect.signature(fn, eval_str=True)  # typer reads __signature__ as it is

    @functools.wraps(fn)
    def wrapper(*args: Any, concepts_quiet: bool = False, concepts_verbose: bool = False, **kwargs: Any) -> Any:
        if concepts_quiet or concepts_verbose:
            _set_verbosity(quiet=concepts_quiet, verbose=concepts_verbose)
        return fn(*args, **kwargs)

    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=kind)
             for name, kind in (("concepts_quiet", _QUIET), ("concepts_verbose", _VERBOSE))]
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    # A fresh dict: functools.wraps shares the command's own annotations.
    wrapper.__annotations__ = {**fn.__annotations__, "concepts_quiet": _QUIET, "concepts_verbose": _VERBOSE}
    return wrapper


class _App(typer.Typer):
    """A Typer app whose commands all map ConceptsError to one line and a non-zero exit."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        kwargs.setdefault("cls", _Command)
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_with_verbosity(_friendly(fn)))
            return fn

        return decorator


app = _App(
    name="concepts",
    help="Build, validate and publish concept datasets; dissect vision models against them.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}
DISTRIBUTION = "concept-dissection"


class _OnceFilter(logging.Filter):
    """Let each warning through once per command (one model load per layer must not repeat it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


def _set_verbosity(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set the log level of the package's logger tree (and silence progress bars with --quiet)."""
    from concepts import progress

    level = logging.DEBUG if _state["debug"] or verbose else logging.ERROR if quiet else logging.INFO
    logging.getLogger("concepts").setLevel(level)
    if quiet:
        progress.set_quiet(True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"{DISTRIBUTION} {version(DISTRIBUTION)}")
        except PackageNotFoundError:
            typer.echo(f"{DISTRIBUTION} (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print errors (and no progress bars)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print debug logs."),
    show_progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress",
        help="Force progress bars on or off (default: on when stderr is a terminal; env CONCEPTS_PROGRESS=1/0).",
    ),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", min=1, envvar="CONCEPTS_MAX_PIXELS",
        help="Largest width x height read from any file or option (default: Pillow's bomb limit, 89,478,485).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Build, validate and publish concept datasets; dissect vision models against them."""
    from concepts import progress
    from concepts.limits import set_max_pixels

    _state["debug"] = debug
    set_max_pixels(max_pixels)
    progress.set_enabled(show_progress)
    progress.set_quiet(False)
    # builders and dissect are installed as concepts.builders and concepts.dissect: one logger tree.
    logger = logging.getLogger("concepts")
    _set_verbosity(quiet=quiet, verbose=verbose)
    for h in list(logger.handlers):
        if getattr(h, "_concepts_cli", False):
            logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.addFilter(_OnceFilter())  # a fresh memory of warnings for each command
    handler._concepts_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def _register() -> None:
    # Imported for their side effect of adding commands to `app`.
    from concepts.cli import agreement, build, dissect, info, publish, report, validate  # noqa: F401


_register()


def main() -> None:
    """Entry point of the ``concepts`` console script."""
    app()
