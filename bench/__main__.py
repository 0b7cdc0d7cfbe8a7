"""``python -m bench``: the template's benchmark, run by ``scripts/bench`` inside the service it
renders (so ``bench_service`` and its dependencies import)."""

import shutil
from pathlib import Path
from typing import Annotated

import typer


def bench(
    quick: Annotated[
        bool, typer.Option(help="Small data, one 1 s round per measurement: under a minute")
    ] = False,
    users: Annotated[int | None, typer.Option(min=1, help="Users to seed [10,000]")] = None,
    projects: Annotated[int | None, typer.Option(min=100, help="Projects [100,000]")] = None,
    items: Annotated[int | None, typer.Option(min=1, help="Items [1,000,000]")] = None,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Seconds of load per measurement [2]")
    ] = None,
    connections: Annotated[
        int, typer.Option(min=1, help="Concurrent connections for throughput")
    ] = 8,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Interleaved rounds per comparison, best counts [5]")
    ] = None,
    output: Annotated[Path, typer.Option(help="Directory for bench.md/json/png")] = Path(
        "bench-results"
    ),
    generator: Annotated[
        str, typer.Option("--load-generator", help="auto (wrk if on PATH), wrk or python")
    ] = "auto",
    check: Annotated[bool, typer.Option(help="Exit 1 when a target is missed")] = False,
    note: Annotated[str, typer.Option(help="A line about the machine for the report")] = "",
    figures: Annotated[
        list[int] | None,
        typer.Option("--figure", min=1, help="Only this figure (repeat for more) [all]"),
    ] = None,
) -> None:
    """Measure each performance pattern against its naive twin, side by side in one run.

    Creates its own database (bench_<id> on DATABASE_URL's server, or a SQLite file in OUTPUT),
    seeds it, serves the app with uvicorn pinned to one core and drives load from another, then
    drops the database and the cache keys it wrote (prefix bench-<id>:).
    """
    try:
        import matplotlib  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        typer.echo(
            f"bench needs {exc.name}: run it through scripts/bench, which installs it",
            err=True,
        )
        raise typer.Exit(2) from None
    if generator not in {"auto", "wrk", "python"}:
        raise typer.BadParameter("--load-generator must be auto, wrk or python")
    if generator == "wrk" and shutil.which("wrk") is None:
        raise typer.BadParameter("wrk is not on PATH (Debian: apt-get install wrk)")
    from .runner import FIGURES
    from .session import run_bench

    unknown = sorted(set(figures or ()) - {number for number, _, _ in FIGURES})
    if unknown:
        raise typer.BadParameter(f"no figure {unknown[0]}: they are 1 to {len(FIGURES)}")

    code = run_bench(
        quick=quick,
        users=users,
        projects=projects,
        items=items,
        duration=duration,
        connections=connections,
        rounds=rounds,
        output=output,
        generator=generator,
        check=check,
        note=note,
        only=set(figures or ()),
    )
    raise typer.Exit(code)


if __name__ == "__main__":
    typer.run(bench)
