"""What ``aioray-runner bench`` prints and draws, from made-up figures (no Ray).

A runner left out because its package is not installed is named in the table
and on the chart; every panel's title fits in its column of the chart. The real
runs are in tests/test_cli.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from aioray_runner._tools.bench import flows, suite


def made_up_result(skipped: dict[str, str], size: str = "quick") -> dict[str, Any]:
    """What a run of every scenario writes, with invented times, through the real code."""
    plan, _ = suite.plan_runners(suite.Options(size=size))
    raw: dict[str, dict[str, Any]] = {}
    for scenario in suite.SCENARIOS:
        group = scenario.split(".")[0]
        for i, runner in enumerate(r for r in plan[group] if r not in skipped):
            per_task = 0.1 * (i + 1) ** 2
            raw.setdefault(scenario, {})[runner] = {
                "n": 200,
                "per_task_ms": per_task,
                "total_s": per_task / 5,
            }
    options = suite.Options(size=size)
    return suite.figures_json(options, suite.SIZES[size], raw, skipped, 60.0)


def test_a_runner_whose_package_is_missing_is_left_out_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = flows.installed_version
    monkeypatch.setattr(
        flows, "installed_version", lambda d: None if d == "prefect-ray" else real(d)
    )
    plan, skipped = suite.plan_runners(suite.Options(size="tiny"))
    assert "ray" not in plan["prefect"]
    assert "aioray" in plan["prefect"]
    assert skipped["ray"] == "prefect-ray is not installed (python -m pip install prefect-ray)"


def test_the_table_names_what_was_left_out() -> None:
    result = made_up_result({"ray": "prefect-ray is not installed (python -m pip install x)"})
    assert result["skipped"] == {
        "ray": {
            "label": "prefect-ray RayTaskRunner",
            "reason": "prefect-ray is not installed (python -m pip install x)",
        }
    }
    assert (
        "left out prefect-ray RayTaskRunner (ray): prefect-ray is not installed"
        " (python -m pip install x)"
    ) in suite.report(result).splitlines()
    assert "left out" not in suite.report(made_up_result({}))


def chart_texts(result: dict[str, Any]) -> tuple[Any, list[Any]]:
    pytest.importorskip("matplotlib")
    from matplotlib.text import Text

    from aioray_runner._tools.bench.plot import figure

    fig = figure(result)
    fig.canvas.draw()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return fig, texts


@pytest.mark.parametrize("size", ["tiny", "quick", "full"])
def test_the_chart_names_what_was_left_out_and_every_title_fits(size: str) -> None:
    skipped = {
        "ray": "prefect-ray is not installed (python -m pip install prefect-ray)",
        "dask": "prefect-dask is not installed (python -m pip install prefect-dask)",
    }
    fig, texts = chart_texts(made_up_result(skipped, size))
    import matplotlib.pyplot as plt

    try:
        words = " ".join(t.get_text() for t in texts).replace("\n", " ")
        assert "left out: RayTaskRunner: prefect-ray is not installed" in words
        assert "DaskTaskRunner: prefect-dask is not installed" in words
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        titles = {ax.get_title(loc="left") for ax in fig.axes}
        for text in texts:  # no title and no note cut off at the edges of the image
            suptitle = text.get_text().startswith("aioray-runner bench (")
            if text.get_text() not in titles and text not in fig.texts and not suptitle:
                continue  # tick labels: matplotlib keeps some outside the drawn range
            extent = text.get_window_extent(renderer)
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
            assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 6
        for ax in axes:  # a title ends before the next column's panel starts
            title = ax.get_title(loc="left")
            assert title.startswith(("core.", "prefect."))
            (artist,) = [t for t in texts if t.get_text() == title]
            right = [o for o in axes if o.get_position().x0 > ax.get_position().x1]
            limit = min((o.get_tightbbox(renderer).x0 for o in right), default=box.x1)
            assert artist.get_window_extent(renderer).x1 <= limit, title
    finally:
        plt.close(fig)


def test_the_chart_has_no_note_when_nothing_was_left_out() -> None:
    fig, texts = chart_texts(made_up_result({}))
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert not any("left out" in t.get_text() for t in texts)
