"""`mucrasp-deploy profile list|show|measure`: the hardware profiles the planner sizes against."""

from __future__ import annotations

from pathlib import Path

import typer

from mucrasp.cli.app import app, console
from mucrasp.errors import MucraspError
from mucrasp.planning.profiles import check_profile_name, list_profiles, load_profile, user_profile_dir, write_profile

profile_app = typer.Typer(help="Hardware profiles: list, show, or measure this machine.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("list")
def list_command() -> None:
    """Known profiles (user profiles shadow bundled ones)."""
    from rich.table import Table

    table = Table(title="Profiles")
    for column in ("name", "memory GB", "GB/s", "TFLOPS", "GPUs", "dtypes", "weight formats", "description"):
        table.add_column(column, no_wrap=column == "name")
    for name in list_profiles():
        p = load_profile(name)
        table.add_row(
            p.name,
            f"{p.memory_gb:g}",
            f"{p.memory_bandwidth_gbps:g}",
            f"{p.dense_tflops:g}",
            str(p.gpu_count),
            ",".join(p.dtypes),
            ",".join(p.weight_formats) or "-",
            p.description,
        )
    console.print(table)


@profile_app.command("show")
def show_command(profile: str = typer.Argument(..., help="Profile name or path to a YAML file.")) -> None:
    """Validate and print one profile."""
    for field, value in load_profile(profile).model_dump().items():
        console.print(f"[bold]{field}[/]: {value}", highlight=False)


@profile_app.command("measure")
def measure_command(
    name: str = typer.Option("local", help="Name of the measured profile (a name, not a path: see --out)."),
    out: Path = typer.Option(None, help="Where to write it; default: the user profile folder (MUCRASP_PROFILE_DIR)."),
    overwrite: bool = typer.Option(False, help="Replace an existing file."),
) -> None:
    """Measure memory, copy bandwidth and matmul throughput here, and write them as a profile."""
    check_profile_name(name)
    from mucrasp.planning.measure import measure_profile

    path = out or user_profile_dir() / f"{name}.yaml"
    if path.exists() and not overwrite:
        raise MucraspError(f"profile file {path} already exists (pass --overwrite to replace it)")
    from mucrasp.atomic_io import check_writable

    check_writable(path)  # before the measurement, not after
    with console.status("measuring memory, bandwidth and matmul throughput"):
        profile = measure_profile(name)
    write_profile(profile, path)
    console.print(
        f"{profile.description}: {profile.memory_gb:g} GB, {profile.memory_bandwidth_gbps:g} GB/s, "
        f"{profile.dense_tflops:g} TFLOPS; written to {path}",
        highlight=False,
    )
