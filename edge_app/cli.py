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
from rich.logging import RichHandler

from rlivs.edge_app.commands import calibrate, check, doctor, eval as evaluate, export, ingest, serve
from rlivs.edge_app.options import console, debug_enabled, internal_error_line

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="rlivs: streaming video question answering, on the device.")

COMMANDS = (
    ingest,  # rlivs ingest | ask | captions | demo
    export,  # rlivs export | build-engines
    evaluate,  # rlivs eval
    serve,  # rlivs serve
    calibrate,  # rlivs calibrate collect | layers | quantize | report
    doctor,  # rlivs doctor
    check,  # rlivs check --bundle B: the self-test on the device
)


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail."),
           debug: bool = typer.Option(False, "--debug", help="On an internal error, show the full traceback "
                                                             "(also: RLIVS_DEBUG=1).")):
    if debug:
        os.environ["RLIVS_DEBUG"] = "1"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("httpx", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


for _module in COMMANDS:
    _module.register(app)


def main() -> None:
    try:
        app(prog_name="rlivs")
    except Exception as e:  # noqa: BLE001 - refusals exit 2 inside the commands; anything reaching here is a bug
        if debug_enabled():
            raise
        console.print(internal_error_line(e))
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
