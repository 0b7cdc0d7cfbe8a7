"""The bench's output: a Markdown table, a JSON file with every raw number, a PNG of the ratios."""

import json
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


@dataclass
class Figure:
    number: int  # the figure's number in the bench's list (runner.FIGURES)
    name: str
    value: float | None  # None: the measurement failed (``error`` says why)
    unit: str = "x"  # "x" is a ratio (charted); else statements, MB, ms, bytes, errors
    target_op: str | None = None  # None: reported, no target
    target: float | None = None
    detail: str = ""
    error: str = ""
    note: str = ""  # why there is no target on this machine (e.g. n/a on SQLite)

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return False
        if self.target_op is None or self.target is None:
            return None
        return _COMPARE[self.target_op](self.value, self.target)

    def value_text(self) -> str:
        if self.value is None:
            return "no value"
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit in {"statements", "errors", "bytes"}:
            return f"{self.value:,.0f} {self.unit}"
        return f"{self.value:,.1f} {self.unit}"

    def target_text(self) -> str:
        if self.target_op is None or self.target is None:
            return self.note or "(reported)"
        target = f"{self.target:g}{'x' if self.unit == 'x' else ' ' + self.unit}"
        return f"{self.target_op} {target}"

    def result_text(self) -> str:
        if self.value is None:
            return f"FAIL: {self.error}"
        passed = self.passed
        if passed is None:
            return "-"
        if passed:
            return "pass"
        assert self.target is not None
        gap = abs(self.value - self.target)
        relative = f" ({gap / abs(self.target):.0%})" if self.target else ""
        unit = "x" if self.unit == "x" else f" {self.unit}"
        return f"MISS by {gap:.2f}{unit}{relative}"


@dataclass
class Report:
    figures: list[Figure]
    machine: dict[str, Any]
    config: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [
            "| # | Figure | Value | Target | Result | Measured |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {f.number} | {f.name} | {f.value_text()} | {f.target_text()} | "
            f"{f.result_text()} | {f.detail} |"
            for f in self.figures
        ]
        return "\n".join(lines) + "\n"

    def markdown_document(self) -> str:
        machine = "\n".join(f"- {key}: {value}" for key, value in self.machine.items())
        config = ", ".join(f"{key}={value}" for key, value in self.config.items())
        return (
            f"# Benchmark results\n\n{self.markdown()}\n## Machine\n\n{machine}\n\n"
            f"## Run\n\n{config}\n"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "config": self.config,
            "figures": [
                {**asdict(f), "passed": f.passed, "target_text": f.target_text()}
                for f in self.figures
            ],
            "raw": self.raw,
        }

    def write(self, directory: Path) -> dict[str, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": directory / "bench.md",
            "json": directory / "bench.json",
            "chart": directory / "bench.png",
        }
        paths["markdown"].write_text(self.markdown_document())
        paths["json"].write_text(json.dumps(self.as_json(), indent=2) + "\n")
        self.chart(paths["chart"])
        return paths

    def chart(self, path: Path) -> None:
        """One horizontal bar per ratio, on a log scale, with its target as a tick."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ratios = [f for f in self.figures if f.unit == "x" and f.value is not None]
        height = 1.2 + 0.55 * len(ratios)
        fig, ax = plt.subplots(figsize=(11, height), layout="constrained")
        labels = [f"{f.number}. {f.name}" for f in ratios]
        values = [f.value or 0.0 for f in ratios]
        colors = [{True: "#2e7d32", False: "#c62828", None: "#546e7a"}[f.passed] for f in ratios]
        positions = list(range(len(ratios)))[::-1]
        ax.barh(positions, values, color=colors, height=0.6)
        for position, figure in zip(positions, ratios, strict=True):
            ax.text(figure.value or 0.0, position, f" {figure.value:.2f}x", va="center", fontsize=9)
            if figure.target is not None:
                ax.plot([figure.target] * 2, [position - 0.4, position + 0.4], color="black", lw=2)
        ax.set_yticks(positions, labels, fontsize=9)
        ax.set_xscale("log")
        ax.axvline(1.0, color="#9e9e9e", lw=0.8, ls="--")
        ax.set_xlabel(
            "ratio (log scale); black tick = target; green pass, red miss, grey no target"
        )
        ax.set_xlim(right=max([*values, 2.0]) * 2)  # room for the value labels
        ax.set_title("Each pattern against its naive twin, measured in one run", fontsize=10)
        fig.savefig(path, dpi=110)
        plt.close(fig)
