"""A bench run as JSON and as the generated section of docs/performance.md.

The document keeps what people write about the figures (analysis, optimizations, profiles) around a
generated section between two markers; `write_document` replaces only that section, so re-running the bench
refreshes the numbers and leaves the prose alone. A document without the markers gets the section appended.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.bench.config import BenchConfig
from deploy.bench.figures import Figure

__all__ = ["BEGIN", "END", "BenchReport", "render_section", "write_document"]

BEGIN = "<!-- keel bench: begin generated section (rewritten by `keel bench`; edit outside it) -->"
END = "<!-- keel bench: end generated section -->"


@dataclass
class BenchReport:
    """Everything one run measured."""

    tag: str
    started_at: str
    config: BenchConfig
    machine: dict[str, Any]
    versions: dict[str, str]
    figures: list[Figure] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # stage → (frame, self %)
    errors: dict[str, str] = field(default_factory=dict)  # stage → why it produced no figures
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)  # what → items sent and landed

    @property
    def lost(self) -> dict[str, dict[str, int]]:
        """The tallies where what landed differs from what was sent (empty when nothing was lost)."""
        return {what: counts for what, counts in self.tallies.items() if counts["sent"] != counts["landed"]}

    def as_dict(self) -> dict[str, Any]:
        """JSON form: run, machine, versions, every figure by key, stage durations, profiles, errors."""
        return {
            "run": {
                "tag": self.tag,
                "started_at": self.started_at,
                "size": self.config.size.value,
                "repetitions": self.config.repetitions,
                "config": {k: v for k, v in vars(self.config).items() if k != "size"},
            },
            "machine": self.machine,
            "versions": self.versions,
            "figures": {figure.key: figure.as_dict() for figure in self.figures},
            "stage_seconds": {name: round(seconds, 1) for name, seconds in self.stage_seconds.items()},
            "profiles": {
                name: [[frame, round(share, 1)] for frame, share in top] for name, top in self.profiles.items()
            },
            "tallies": self.tallies,
            "errors": self.errors,
        }

    def write_json(self, path: Path) -> None:
        """Write `as_dict()` to `path` (folders created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False, default=str) + "\n")


def _number(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "—"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}"


def _met(figure: Figure) -> str:
    if figure.met is None:
        return "—"
    return "**yes**" if figure.met else "no"


def render_section(report: BenchReport) -> str:
    """The generated Markdown: run, machine, versions, the table of figures, details and profiles."""
    machine, config = report.machine, report.config
    flags = {"full": "`keel bench`", "quick": "`keel bench --quick`", "tiny": "the tiny smoke size"}[config.size.value]
    lines = [
        BEGIN,
        "",
        f"## Latest run: {flags}",
        "",
        (
            f"Run `{report.tag}` started {report.started_at}. Every figure is the median of {config.repetitions} "
            f"repetition(s) ({config.heavy_repetitions} for `end_to_end` and `memory`), each baseline measured "
            f"in the same run. Stages took "
            f"{', '.join(f'{k} {v:.0f} s' for k, v in report.stage_seconds.items())}."
        ),
        "",
        (
            f"**Machine:** {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gb']} GB RAM, "
            f"{machine['os']}; load average when the run started "
            f"{' / '.join(str(v) for v in machine['load_average_1_5_15'])} (the machine is shared)."
        ),
        "",
        "**Versions:** " + " · ".join(f"{name} {version}" for name, version in report.versions.items()),
        "",
        "| figure | ours | baseline | ratio | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for figure in report.figures:
        target = figure.target.describe(figure.unit) if figure.target else "—"
        ratio = f"{figure.ratio:.2f}" if math.isfinite(figure.ratio) else "—"
        lines.append(
            f"| `{figure.key}` | {_number(figure.ours_median, figure.unit)} | "
            f"{_number(figure.baseline_median, figure.unit)} | {ratio} | {target} | {_met(figure)} |"
        )
    lines += ["", "Ratios read “higher is better”: ours ÷ baseline for rates, baseline ÷ ours for costs.", ""]
    for stage, error in report.errors.items():
        lines.append(f"- **{stage} failed:** {error}")
    if report.tallies:
        landed = sum(counts["landed"] for counts in report.tallies.values())
        verdict = f"{len(report.lost)} with a difference" if report.lost else "every one landed, none twice"
        summary = f"{landed:,} items over {len(report.tallies)} tallies — {verdict}"
        lines += [f"Sent and landed (ops projected, rows pulled): {summary}.", ""]
    lines += ["### What each figure measures", ""]
    for figure in report.figures:
        samples = ", ".join(_number(v, "").strip() for v in figure.ours)
        base = ", ".join(_number(v, "").strip() for v in figure.baseline)
        lines.append(
            f"- `{figure.key}` — ours: {figure.what} [{samples}]; baseline: {figure.baseline_what} [{base}]"
            + (f". {figure.notes}" if figure.notes else "")
        )
        details = {k: v for k, v in figure.extra.items() if not k.startswith("repetition")}
        if details:
            lines.append(f"  - {json.dumps(details, ensure_ascii=False, default=str)}")
        for key, value in figure.extra.items():
            if key.startswith("repetition"):
                lines.append(f"  - {key}: {json.dumps(value, ensure_ascii=False, default=str)}")
    if report.profiles:
        lines += ["", "### Profiles (pyinstrument, one extra repetition): functions by share of samples", ""]
        for stage, top in report.profiles.items():
            lines.append(f"**{stage}**: " + "; ".join(f"`{frame}` {share:.1f} %" for frame, share in top))
            lines.append("")
    lines += ["", END]
    return "\n".join(lines) + "\n"


TEMPLATE = """# Performance

`keel bench` measures every stage of the data path against the raw limit of the same machine, in the same run
(`make bench`, or `keel bench --quick` for a few minutes). The section between the markers below is rewritten
by each run; the analysis around it is written by people.

"""


def write_document(report: BenchReport, path: Path) -> None:
    """Replace the generated section of `path` (create the document when missing)."""
    section = render_section(report)
    text = path.read_text() if path.exists() else TEMPLATE
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
