"""Results files, printed tables and the comparison plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _table(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in
                         enumerate(zip(cells, widths, strict=True)))  # fmt: skip

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def pope_table(strategies: dict[str, Any]) -> str:
    """Strategy x split rows: accuracy, precision, recall, F1, yes-ratio (x100)."""
    header = ["strategy", "split", "Acc", "Prec", "Rec", "F1", "Yes%", "N"]
    rows = []
    for name, res in strategies.items():
        for split, m in [*res["splits"].items(), ("mean", res["mean"])]:
            vals = [f"{100 * m[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1")]
            n = str(m.get("n", ""))
            rows.append([name, split, *vals, f"{100 * m['yes_ratio']:.1f}", n])
    return _table(header, rows)


def chair_table(strategies: dict[str, Any]) -> str:
    header = ["strategy", "CHAIR_s", "CHAIR_i", "Recall", "Len", "N"]
    rows = [
        [name, *(f"{100 * m[k]:.1f}" for k in ("chair_s", "chair_i", "recall")),
         f"{m['avg_len']:.1f}", str(m["captions"])]
        for name, m in strategies.items()
    ]  # fmt: skip
    return _table(header, rows, left=1)


def _bars(
    path: Path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(groups) * max(1, len(series)) / 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pope_plot(path: Path, strategies: dict[str, Any], title: str = "POPE F1 (%)") -> None:
    """F1 per split (and mean) for each strategy."""
    splits = [*next(iter(strategies.values()))["splits"], "mean"]
    series = {
        s: [100 * (r["mean"] if s == "mean" else r["splits"].get(s, {"f1": 0}))["f1"]
            for r in strategies.values()]
        for s in splits
    }  # fmt: skip
    _bars(path, list(strategies), series, "F1 (%)", title)


def chair_plot(
    path: Path, strategies: dict[str, Any], title: str = "CHAIR (lower is better)"
) -> None:
    series = {
        label: [100 * m[key] for m in strategies.values()]
        for label, key in (("CHAIR_s", "chair_s"), ("CHAIR_i", "chair_i"), ("Recall", "recall"))
    }
    _bars(path, list(strategies), series, "%", title)
