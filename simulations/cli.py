"""The ``fedistill`` command line: assembles the sub-commands' apps and runs them."""

from __future__ import annotations

import signal

import typer

from common.errors import FedistillError
from simulations.audit_cli import audit_app
from simulations.cli_common import console
from simulations.compress_cli import compress_app
from simulations.data_cli import data_app
from simulations.deploy_cli import deploy_app
from simulations.generate_cli import generate_app
from simulations.robustness.command import robustness_app
from simulations.simulate_cli import simulate_app

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Privacy-preserving federated distillation on Flower and Opacus.",
)
# Listed in this order by `fedistill --help`: the single commands, then the groups.
app.add_typer(compress_app)  # compress
app.add_typer(deploy_app)  # certs, coordinator, node, node-data
app.add_typer(generate_app)  # generate
app.add_typer(robustness_app)  # robustness
app.add_typer(simulate_app)  # simulate
app.add_typer(data_app, name="data", help="Inspect the registered datasets.")
app.add_typer(audit_app, name="audit", help="Audit privacy: verify ledgers, report ε, MIA.")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Console entry point: project errors become one clear line and exit code 2."""
    # SIGTERM unwinds like Ctrl-C, so the runner still stops the processes it started.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # standalone_mode=False returns a command's typer.Exit code instead of exiting
        code = app(standalone_mode=False)
    except FedistillError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
    except OSError as exc:  # a path that cannot be read or written: the OS says why
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
