"""The ``concepts`` command line: one thin module per command, errors mapped to one line."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Optional

import typer

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


def _call(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Run a command, mapping errors to one line, SIGINT to exit 130 and SIGTERM to exit 143."""
    try:
        return fn(*args, **kwargs)
    except ConceptsError as err:
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


class _App(typer.Typer):
    """A Typer app whose commands all map ConceptsError to one line and a non-zero exit."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_friendly(fn))
            return fn

        return decorator


app = _App(
    name="concepts",
    help="Build, validate and publish concept datasets; dissect vision models against them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print errors."),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", min=1, envvar="CONCEPTS_MAX_PIXELS",
        help="Largest width x height read from any file or option (default: Pillow's bomb limit, 89,478,485).",
    ),
) -> None:
    """Build, validate and publish concept datasets; dissect vision models against them."""
    from concepts.limits import set_max_pixels

    _state["debug"] = debug
    set_max_pixels(max_pixels)
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO
    # builders and dissect are installed as concepts.builders and concepts.dissect: one logger tree.
    logger = logging.getLogger("concepts")
    logger.setLevel(level)
    if not any(getattr(h, "_concepts_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
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
