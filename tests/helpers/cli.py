"""The `rlivs` command in-process, as the tests run it: typer's CliRunner, every argument as a string."""

from typer.testing import CliRunner


def run_cli(*args, catch_exceptions: bool = False, **kw):
    """`rlivs ARGS...` in-process -> click's Result; exceptions propagate unless catch_exceptions (a traceback fails
    the test rather than hiding in result.exception)."""
    from rlivs.edge_app.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions, **kw)
