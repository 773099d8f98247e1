"""`rlivs`: the typer app, its global options (`--verbose`, `--debug`) and `main()`.

The commands live in `edge_app/commands/`: each module exposes `register(app)`, which adds its commands, and
`COMMANDS` lists them in the order `rlivs --help` shows them. A command module imports torch, transformers, the
service and the model inside its commands, so `rlivs --help` and the torch-free runtime stay torch-free.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.text import Text

from rlivs.edge_app.commands import calibrate, check, doctor, eval as evaluate, export, ingest, memory, serve
from rlivs.edge_app.options import console, debug_enabled, exit_code_help, internal_error_line

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rlivs: streaming video question answering, on the device.\n\n" + exit_code_help())

COMMANDS = (
    ingest,  # rlivs ingest | ask | captions | demo
    memory,  # rlivs memory info | export | import, forget, reindex
    export,  # rlivs export | build-engines
    evaluate,  # rlivs eval
    serve,  # rlivs serve
    calibrate,  # rlivs calibrate collect | layers | quantize | report
    doctor,  # rlivs doctor
    check,  # rlivs check --bundle B: the self-test on the device
)

LIBRARY_LOGS = ("httpx", "huggingface_hub", "transformers", "onnxscript", "onnx_ir", "torch", "py.warnings")


class LineHandler(logging.Handler):
    """A log record as one line, `LEVEL message`, on the shared stderr console: no date in front, and never wrapped at
    the console's width (a pipe or a log file gets whole lines; a terminal wraps them itself). The console finds
    stderr when it prints, so a handler installed once serves every later invocation in the same process."""

    STYLES = {"DEBUG": "dim", "INFO": "blue", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = Text(f"{record.levelname:<5} ", style=self.STYLES.get(record.levelname, ""))
            line.append(self.format(record))
            console.print(line, soft_wrap=True, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("rlivs")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"rlivs {version()}")
        raise typer.Exit(0)


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v",
                                        help="Log debug detail, and the libraries' own logs and warnings (ONNX "
                                             "export, transformers, ...), which are hidden otherwise."),
           debug: bool = typer.Option(False, "--debug", help="On an internal error, show the full traceback "
                                                             "(also: RLIVS_DEBUG=1)."),
           _version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                         help="Print the rlivs version and exit.")):
    if debug:
        os.environ["RLIVS_DEBUG"] = "1"
    if not verbose:  # the Hugging Face libraries' own progress bars (read when they are imported, after this)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(format="%(message)s", handlers=[LineHandler()])
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # warnings go through logging: hidden below, shown with -v
    for noisy in LIBRARY_LOGS:  # quiet by default: one line per stage from rlivs itself; -v shows everything
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)


for _module in COMMANDS:
    _module.register(app)


def cli_command():
    """The click command behind `app`, with help that reads plainly: on/off flags show no `<bool>` value and
    positionals show as VIDEO, QUESTION."""
    from typer.core import TyperArgument, TyperOption

    cmd = typer.main.get_command(app)

    def tidy(c) -> None:
        help_option = c.get_help_option(c.context_class(c))  # made on demand, then cached by the command
        for p in [*c.params, *([help_option] if help_option else [])]:
            if isinstance(p, TyperOption) and p.is_flag:
                p.metavar = ""
            elif isinstance(p, TyperArgument) and p.metavar is None:
                p.metavar = p.name.upper()
        for sub in getattr(c, "commands", {}).values():
            tidy(sub)

    tidy(cmd)
    return cmd


def main() -> None:
    try:
        cli_command()(prog_name="rlivs")
    except Exception as e:  # noqa: BLE001 - refusals exit 2 inside the commands; anything reaching here is a bug
        if debug_enabled():
            raise
        console.print(internal_error_line(e))
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
