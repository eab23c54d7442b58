"""The ``concepts`` command line: one thin module per command, errors mapped to one line."""

from __future__ import annotations

import logging
import sys
import traceback

import click
import typer
from typer.core import TyperGroup

from concepts.errors import ConceptsError


class _UserError(click.ClickException):
    """A ConceptsError shown as one line, with the error's own exit code."""

    def __init__(self, err: ConceptsError) -> None:
        super().__init__(str(err))
        self.exit_code = err.exit_code

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        hint = "" if _state["debug"] else " (--debug shows the traceback)"
        click.echo(f"error: {self.message}{hint if self.exit_code != 2 else ''}", err=True)


class _Group(TyperGroup):
    """Maps known errors to one line and a non-zero exit; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except ConceptsError as err:
            if _state["debug"]:
                traceback.print_exc()
            raise _UserError(err) from err
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


app = typer.Typer(
    cls=_Group,
    name="concepts",
    help="Build, validate and publish concept datasets; dissect vision models against them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print errors."),
) -> None:
    """Build, validate and publish concept datasets; dissect vision models against them."""
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO
    logger = logging.getLogger("concepts")
    logger.setLevel(level)
    for name in ("concepts", "builders", "dissect"):
        lg = logging.getLogger(name)
        lg.setLevel(level)
        if not any(getattr(h, "_concepts_cli", False) for h in lg.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            handler._concepts_cli = True  # type: ignore[attr-defined]
            lg.addHandler(handler)
            lg.propagate = False


def _register() -> None:
    # Imported for their side effect of adding commands to `app`.
    from concepts.cli import build, info, validate  # noqa: F401


_register()


def main() -> None:
    """Entry point of the ``concepts`` console script."""
    app()
