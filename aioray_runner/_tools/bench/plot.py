"""``aioray-runner bench --plot``: a bar chart per scenario, the ratio written on each bar."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

#: Bar labels: the runner names, as short as a chart needs.
SHORT_LABELS = {
    "aioray": "aioray",
    "ray-actor": "plain Ray actor",
    "ray": "RayTaskRunner",
    "threadpool": "ThreadPoolTaskRunner",
    "dask": "DaskTaskRunner",
    "gather": "gather in the flow",
}

PLOT_EXTRA_HINT = (
    "--plot needs matplotlib, which the `plot` extra installs: python -m pip install '.[plot]'"
    " in a clone of aioray-runner"
)


def require_matplotlib() -> None:
    """Fail at once, naming the extra, when matplotlib is missing (before a long run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise SystemExit(PLOT_EXTRA_HINT) from exc


#: Characters per line of a panel's title: a panel is 5.6 inches wide, its bar
#: labels take the left of it, and the title starts where the bars do.
TITLE_WIDTH = 52


def plot(result: dict[str, Any], path: Path) -> None:
    """Write ``result`` (what ``bench --json`` writes) as a PNG to ``path``.

    One panel per scenario; one horizontal bar per runner, its length the time
    per task (log scale: the runners differ by orders of magnitude), with the
    ratio to aioray written on it. aioray's bar is the dark one. A runner left
    out (not installed) is named under the panels, with why.
    """
    import matplotlib.pyplot as plt

    fig = figure(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figure(result: dict[str, Any]) -> Any:
    """The chart of :func:`plot`, as a matplotlib figure (for the caller to save and close)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    scenarios = [
        (name, data)
        for name, data in result["scenarios"].items()
        if any("per_task_ms" in e for e in data["runners"].values())
    ]
    if not scenarios:
        raise ValueError("no figures to plot: every run failed")
    cols = 2 if len(scenarios) > 1 else 1
    rows = math.ceil(len(scenarios) / cols)
    note = left_out_note(result.get("skipped", {}), width=int(110 * cols / 2))
    note_lines = note.count("\n") + 1 if note else 0
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(5.6 * cols, 2.6 * rows + 0.7 + 0.18 * note_lines),
        squeeze=False,
    )
    for ax in axes.flat[len(scenarios) :]:
        ax.set_visible(False)
    for ax, (name, data) in zip(axes.flat, scenarios):
        entries = [(r, e) for r, e in data["runners"].items() if "per_task_ms" in e]
        labels = [f"{SHORT_LABELS.get(r, r)}\nN={e['n']}" for r, e in entries]
        values = [e["per_task_ms"] for _, e in entries]
        colours = ["#1f4e79" if r == "aioray" else "#9bbbd9" for r, _ in entries]
        y = list(range(len(entries)))[::-1]
        ax.barh(y, values, color=colours)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(min(values) / 2, max(values) * 12)
        ax.set_xlabel("ms per task (log scale)", fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=7)
        title = textwrap.fill(f"{name}: {data['title']}", TITLE_WIDTH)
        ax.set_title(title, fontsize=8.5, loc="left")
        for yi, (runner, entry), value in zip(y, entries, values):
            ratio = entry.get("ratio")
            text = "aioray" if runner == "aioray" else (f"{ratio:.2f}x" if ratio else "n/a")
            ax.text(value * 1.08, yi, f"{text}  ({value:.3g} ms)", va="center", fontsize=7.5)
    v = result["versions"]
    fig.suptitle(
        f"aioray-runner bench ({result['size']}), {result['cpus']} CPUs, Ray {v['ray']},"
        f" Prefect {v['prefect'] or '-'}: time per task, ratio to aioray in the same run",
        fontsize=9,
    )
    bottom = 0.0
    if note:
        shown = fig.text(0.01, 0.01, note, fontsize=8, ha="left", va="bottom", color="#7a2e0e")
        fig.canvas.draw()
        height = shown.get_window_extent().height / fig.bbox.height
        bottom = 0.01 + height + 0.01
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def left_out_note(skipped: dict[str, Any], width: int = 110) -> str:
    """``left out: RayTaskRunner: prefect-ray is not installed (...)``, wrapped; "" if none.

    ``skipped`` is the JSON's: name -> ``{"label", "reason"}``.
    """
    parts = []
    for name, entry in skipped.items():
        parts.append(f"{SHORT_LABELS.get(name, entry['label'])}: {entry['reason']}")
    if not parts:
        return ""
    return textwrap.fill("left out: " + "; ".join(parts), width)
