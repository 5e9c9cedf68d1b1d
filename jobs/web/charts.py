"""The stats page's charts, rendered on the server by pygal as inline SVG; their stylesheet is static/jobs/charts.css."""
from __future__ import annotations

import pygal
from django.utils.safestring import SafeString, mark_safe
from pygal.style import Style

from ..selectors import JobStats

STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#222",
    foreground_strong="#111",
    foreground_subtle="#999",
    font_family="system-ui, sans-serif",
    label_font_size=11,
    major_label_font_size=11,
    legend_font_size=12,
    title_font_size=14,
    colors=("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"),
)


def _config(**options) -> dict:
    # No script: pygal's tooltips load JavaScript from a CDN, which the page must not depend on.
    return {"style": STYLE, "js": [], "disable_xml_declaration": True, "width": 900, "height": 320,
            "legend_at_bottom": True, "no_data_text": "No finished jobs", **options}


# How many series charts.css has colours for: more than the built-in kinds and a project's own.
CSS_SERIES = 24


def _local_name(element) -> str:
    return element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""


def _policy_safe(root):
    """Only what the page's Content-Security-Policy lets run: pygal always embeds a script with its
    tooltip config, a <style> element and a style attribute (on the tooltip, which only that script
    shows). The page shows static charts, styled by static/jobs/charts.css."""
    for parent in list(root.iter()):
        parent.attrib.pop("style", None)
        for child in list(parent):
            if _local_name(child) in ("script", "style") or "tooltip" in child.get("class", "").split():
                parent.remove(child)
    return root


def chart_css() -> str:
    """The text of static/jobs/charts.css: the stylesheet pygal embeds in each chart for STYLE, for any chart."""
    chart = pygal.Bar(**_config())
    for index in range(CSS_SERIES):
        chart.add(f"series {index}", [1])
    style = next(element for element in chart.render_tree().iter() if _local_name(element) == "style")
    rules = style.text.replace(f"#chart-{chart.uuid}", "svg.pygal-chart")
    return (f"/* pygal {pygal.__version__}'s chart styles for jobs/web/charts.py's STYLE, written by its chart_css(); "
            "tests/test_views.py checks it. */\n" + rules.strip() + "\n")


def _svg(chart) -> SafeString:
    chart.add_xml_filter(_policy_safe)
    # pygal builds the SVG as an XML tree, so kind names and labels in it are escaped.
    return mark_safe(chart.render(is_unicode=True))


def throughput_chart(stats: JobStats) -> SafeString:
    unit = "minute" if stats.window == "hour" else "hour"
    labels = [p.strftime("%H:%M") for p in stats.periods]
    chart = pygal.StackedBar(**_config(
        title=f"Jobs finished per {unit}, by kind", x_label_rotation=0, show_minor_x_labels=False,
        x_labels_major_every=10 if unit == "minute" else 3, truncate_label=-1,
    ))
    chart.x_labels = labels
    for kind in stats.kinds:
        chart.add(kind.kind, kind.series)
    return _svg(chart)


def success_chart(stats: JobStats) -> SafeString:
    chart = pygal.HorizontalBar(**_config(
        title="Success rate (succeeded / succeeded + failed), %", range=(0, 100), show_legend=False,
        height=max(160, 60 + 36 * len(stats.kinds)),
    ))
    chart.x_labels = [k.kind for k in stats.kinds]
    chart.add("success rate", [None if k.success_rate is None else round(100 * k.success_rate, 1)
                               for k in stats.kinds])
    return _svg(chart)


def timing_chart(stats: JobStats, which: str) -> SafeString:
    chart = pygal.Bar(**_config(title=f"{which.capitalize()} time per kind, seconds (p50, p95)"))
    chart.x_labels = [k.kind for k in stats.kinds]
    for q in ("p50", "p95"):
        chart.add(q, [_round(getattr(getattr(k, which), q)) for k in stats.kinds])
    return _svg(chart)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def stats_charts(stats: JobStats) -> dict[str, SafeString]:
    return {
        "throughput": throughput_chart(stats),
        "success": success_chart(stats),
        "wait": timing_chart(stats, "wait"),
        "run": timing_chart(stats, "run"),
    }
