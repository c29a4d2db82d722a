"""The README's results table, generated from the committed summaries, never typed.

    python -m benchmarks.readme_table          # rewrite the table in README.md
    python -m benchmarks.readme_table --check  # exit 1 if README.md's table is not what the summaries say

Each row names an experiment's summary and the arms to read from it: `small` (the width-r model
trained by everyone), MSfusion as shipped, FedRolex where it ran, and full width. Accuracy is the
final central accuracy, mean ± sd over seeds; the gap closed is (MSfusion − small) / (full − small),
paired by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.run import _sd, gap_closed

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
BEGIN, END = "<!-- results table: python -m benchmarks.readme_table -->", "<!-- end of results table -->"


@dataclass(frozen=True)
class Row:
    label: str
    r: str
    summary: str  # docs/results/<summary>: an experiment's summary.json, or residual_stream.json
    small: str
    msfusion: str
    full: str
    fedrolex: str | None = None


ROWS = (
    Row("[C1](docs/results.md#c1-converged-capacity-bound-cifar-10): CNN on CIFAR-10, 10 nodes, 300 rounds", "1/4", "C1/summary.json",
        "small-r0.25", "msfusion-shipped-r0.25", "full", "fedrolex-r0.25"),
    Row("C1", "1/2", "C1/summary.json", "small-r0.5", "msfusion-shipped-r0.5", "full"),
    Row("[SST2L](docs/results.md#sst2l-pretrained-minilm-on-sst-2-run-to-flat-curves-issue-16-part-4): pretrained MiniLM on SST-2, "
        "8 nodes, 40 rounds (evaluated unscaled, as the SST-2 preset does)", "1/2", "SST2L/summary.json", "small", "msfusion-shipped-unscaled", "full"),
    Row("[DC](docs/results.md#dc-depth-windows-on-cifar-10-c1s-protocol-issue-34--47-points-below-shallow-no-headroom): "
        "depth windows, residual CNN on CIFAR-10, C1's protocol (`small` here is `shallow`, 2 of 4 blocks per stage; MSfusion is "
        "`msfusion-depth`)", "1/2", "DC/summary.json", "shallow", "msfusion-depth", "full"),
    Row("[residual MLP](docs/results.md#does-more-training-make-the-model-worse-a-normalised-residual-stream), normalised stream, "
        "digits, 8 nodes, 2 seeds", "1/8", "residual_stream.json", "small", "msfusion", "full", "fedrolex"),
)


def per_seed(summary: str, arm: str) -> dict[int, float]:
    """Final accuracy by seed (an experiment's run files, or the residual stream's runs)."""
    if summary == "residual_stream.json":
        runs = json.loads((RESULTS / summary).read_text())["runs"]
        return {int(k.split("/s")[1]): v["final"] for k, v in runs.items() if k.split("/s")[0] == arm}
    exp = summary.split("/")[0]
    found = {}
    for path in sorted((RESULTS / exp / "runs").glob(f"{arm}-s*.jsonl")):
        seed = path.stem.rsplit("-s", 1)[1]
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        finals = [r["central-accuracy"] for r in rows if isinstance(r.get("central-accuracy"), float)]
        if seed.isdigit() and finals:
            found[int(seed)] = finals[-1]
    return found


def cell(values: dict[int, float], bold: bool = False) -> str:
    if not values:
        return "–"
    mean, sd = statistics.mean(values.values()), _sd(list(values.values()))
    text = f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f} (1 seed)"
    return f"**{text}**" if bold else text


def render() -> str:
    lines = [
        "| benchmark | r | `small` | **MSfusion** | FedRolex | full width | gap closed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        small, ours, full = (per_seed(row.summary, arm) for arm in (row.small, row.msfusion, row.full))
        rolex = per_seed(row.summary, row.fedrolex) if row.fedrolex else {}
        gaps = [gap_closed(ours[s], small[s], full[s]) for s in sorted(ours) if s in small and s in full]
        sd = _sd(gaps)
        gap = f"**{statistics.mean(gaps):+.2f} ± {sd:.2f}**" if sd is not None else "–"
        lines.append(f"| {row.label} | {row.r} | {cell(small)} | {cell(ours, bold=True)} | {cell(rolex)} | {cell(full)} | {gap} |")
    return "\n".join(lines)


def with_table(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{render()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    path = REPO / "README.md"
    readme = path.read_text()
    fresh = with_table(readme)
    if args.check:
        return 0 if fresh == readme else 1
    path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
