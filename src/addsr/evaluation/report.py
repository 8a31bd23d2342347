"""The evaluation report: tables in the paper's layout (Markdown and CSV), image grids and a perception-distortion
scatter plot, all built from the per-image records."""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..io import atomic_write, load_image, save_image, save_text
from .config import EvalConfig
from .layout import OutputLayout
from .methods import SuperResolutionMethod
from .samples import Sample

LOWER_IS_BETTER = frozenset({"niqe", "lpips", "dists"})
METRIC_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "niqe": "NIQE", "lpips": "LPIPS", "dists": "DISTS",
                 "maniqa-pipal": "MANIQA", "musiq": "MUSIQ", "clipiqa": "CLIPIQA"}
METRIC_DECIMALS = {"psnr": 2, "niqe": 2, "musiq": 2}
DEFAULT_DECIMALS = 4
PERCEPTUAL_AXES = ("maniqa-pipal", "niqe")  # the scatter's x axis: the first one measured
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
MIB = 2**20
MATPLOTLIB_HINT = "pip install 'addsr[eval]'"

logger = logging.getLogger(__name__)


def metric_label(metric: str) -> str:
    """E.g. ``PSNR ↑`` or ``NIQE ↓``."""
    arrow = "↓" if metric in LOWER_IS_BETTER else "↑"
    return f"{METRIC_LABELS.get(metric, metric)} {arrow}"


def format_value(metric: str, value: float | None) -> str:
    return "n/a" if value is None else f"{value:.{METRIC_DECIMALS.get(metric, DEFAULT_DECIMALS)}f}"


def best_methods(metric: str, values: dict[str, float | None]) -> set[str]:
    """Methods whose value, as printed, is the best of the row (all of them on a tie)."""
    printed = {method: float(format_value(metric, value)) for method, value in values.items() if value is not None}
    if not printed:
        return set()
    best = min(printed.values()) if metric in LOWER_IS_BETTER else max(printed.values())
    return {method for method, value in printed.items() if value == best}


@dataclass
class TableRow:
    """Means over the images of one dataset and degradation for one metric, per method."""

    dataset: str
    degradation: str
    metric: str
    images: int
    values: dict[str, float | None]


def table_rows(records: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]) -> list[TableRow]:
    """Rows in record order of (dataset, degradation), then metric order; metrics no record has are left out."""
    scores: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    images: dict[tuple[str, str], set[str]] = defaultdict(set)
    for record in records:
        group = (record["dataset"], record["degradation"])
        images[group].add(record["image"])
        for metric, result in record["metrics"].items():
            scores[(*group, metric)][record["method"]].append(result["value"])
    rows = []
    for dataset, degradation in images:
        for metric in metrics:
            by_method = scores.get((dataset, degradation, metric))
            if by_method:
                values = {m: float(np.mean(by_method[m])) if by_method.get(m) else None for m in methods}
                rows.append(TableRow(dataset, degradation, metric, len(images[(dataset, degradation)]), values))
    return rows


@dataclass
class MethodCost:
    """Mean seconds per image and the largest peak memory over a method's records."""

    seconds: float
    peak_bytes: int | None
    devices: list[str]
    memory_measures: list[str]


def method_costs(records: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, MethodCost]:
    costs = {}
    for method in methods:
        mine = [record for record in records if record["method"] == method]
        peaks = [record["peak_memory_bytes"] for record in mine if record["peak_memory_bytes"] is not None]
        costs[method] = MethodCost(
            seconds=float(np.mean([record["seconds"] for record in mine])),
            peak_bytes=max(peaks) if peaks else None,
            devices=sorted({record["device"] for record in mine}),
            memory_measures=sorted({record["memory_measure"] for record in mine}),
        )
    return costs


def _metric_notes(records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[str]:
    """One line per metric and distinct implementation/settings found in the records."""
    seen: dict[str, dict[str, None]] = {metric: {} for metric in metrics}
    for record in records:
        for metric, result in record["metrics"].items():
            settings = ", ".join(f"{key}={value}" for key, value in result["settings"].items())
            seen.setdefault(metric, {})[f"{result['implementation']}; {settings}"] = None
    return [f"- {metric_label(metric)}: {note}" for metric, notes in seen.items() for note in notes]


def _protocol_lines(config: EvalConfig, samples: Sequence[Sample]) -> list[str]:
    counts: dict[str, set[str]] = defaultdict(set)
    for sample in samples:
        counts[sample.dataset].add(sample.image)
    datasets = [f"- {d.name}: {len(counts[d.name])} images, {d.kind}, from `{d.path}`" for d in config.datasets]
    crop, scale = config.crop_size, config.scale
    return [
        f"Protocol: each side of an HR image is centre-cropped to min({crop}, side rounded down to a multiple of "
        f"{scale}), without padding; synthetic LR inputs are these crops degraded x{scale} by the paper's "
        f"degradations (`addsr.degradations.paper_degradation`), seeded per dataset, degradation and image from seed "
        f"{config.seed}; real LR images are centre-cropped to at most {crop // scale} px a side and get "
        "no-reference metrics only. Values are means over images; the best value of each row (as printed) is in "
        "**bold**; ↑ higher is better, ↓ lower is better.",
        "",
        "Datasets:",
        *datasets,
    ]


def _markdown_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def results_markdown(
    config: EvalConfig, samples: Sequence[Sample], methods: Sequence[SuperResolutionMethod],
    records: Sequence[dict[str, Any]], figures: Sequence[Path],
) -> str:
    """The Markdown report: protocol, metric and method settings, the results table, the cost table, figures."""
    names = [method.name for method in methods]
    rows, previous = [], (None, None)
    for row in table_rows(records, names, config.metrics):
        best = best_methods(row.metric, row.values)
        cells = [f"**{format_value(row.metric, v)}**" if m in best else format_value(row.metric, v)
                 for m, v in row.values.items()]
        dataset = f"{row.dataset} ({row.images})" if row.dataset != previous[0] else ""
        degradation = row.degradation if (row.dataset, row.degradation) != previous else ""
        rows.append([dataset, degradation, metric_label(row.metric), *cells])
        previous = (row.dataset, row.degradation)
    costs = method_costs(records, names)
    devices = sorted({device for cost in costs.values() for device in cost.devices})
    measures = sorted({measure for cost in costs.values() for measure in cost.memory_measures})
    cost_rows = [
        ["seconds / image", *(f"{costs[m].seconds:.3f}" for m in names)],
        ["peak memory (MiB)", *("n/a" if costs[m].peak_bytes is None else f"{costs[m].peak_bytes / MIB:.1f}"
                                for m in names)],
    ]
    lines = [
        "# Evaluation results", "",
        *_protocol_lines(config, samples), "",
        "Metrics:", *_metric_notes(records, config.metrics), "",
        "Methods:", *(f"- {m.name}: " + ", ".join(f"{k}={v}" for k, v in m.settings.items()) for m in methods), "",
        *_markdown_table(["Dataset (images)", "Degradation", "Metric", *names], rows,
                         ["---", "---", "---", *("---:" for _ in names)]),
        "", "## Cost", "",
        f"Device: {', '.join(devices)}. Seconds per image: wall-clock time of the method's call (model loading "
        f"excluded), mean over all images. Peak memory: the largest over all images, measured as {', '.join(measures)} "
        "(see `addsr.evaluation.memory`).", "",
        *_markdown_table(["", *names], cost_rows, ["---", *("---:" for _ in names)]),
    ]
    if figures:
        lines += ["", "## Figures", "", *(f"![{path.stem}]({path.relative_to(config.out_dir).as_posix()})"
                                          for path in figures)]
    return "\n".join(lines) + "\n"


def results_csv(records: Sequence[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]) -> str:
    """The results table at full precision, one row per dataset x degradation x metric, then the cost rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "degradation", "metric", "images", *methods])
    for row in table_rows(records, methods, metrics):
        writer.writerow([row.dataset, row.degradation, row.metric, row.images,
                         *("" if v is None else repr(v) for v in row.values.values())])
    costs = method_costs(records, methods)
    writer.writerow(["all", "all", "seconds_per_image", len(records) // max(len(methods), 1),
                     *(repr(costs[m].seconds) for m in methods)])
    writer.writerow(["all", "all", "peak_memory_mib", len(records) // max(len(methods), 1),
                     *("" if costs[m].peak_bytes is None else repr(costs[m].peak_bytes / MIB) for m in methods)])
    return buffer.getvalue()


def _crop_box(lr_size: tuple[int, int], crop: int, scale: int) -> tuple[int, int, int, int]:
    """The centred (left, top, right, bottom) LR box of the grid patch."""
    width, height = lr_size
    side_w, side_h = min(max(1, crop // scale), width), min(max(1, crop // scale), height)
    left, top = (width - side_w) // 2, (height - side_h) // 2
    return left, top, left + side_w, top + side_h


def render_grid(titles: Sequence[str], rows: Sequence[tuple[str, Sequence[Image.Image]]]) -> Image.Image:
    """Cells side by side under column ``titles``; each row's label is drawn on its first cell."""
    cell_w = max(cell.width for _, cells in rows for cell in cells)
    cell_h = max(cell.height for _, cells in rows for cell in cells)
    gap, band = 2, 16
    grid = Image.new("RGB", (len(titles) * (cell_w + gap) - gap, band + len(rows) * (cell_h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(titles):
        draw.text((column * (cell_w + gap) + 2, 2), title, fill="black")
    for index, (label, cells) in enumerate(rows):
        top = band + index * (cell_h + gap)
        for column, cell in enumerate(cells):
            grid.paste(cell, (column * (cell_w + gap), top))
        draw.rectangle(draw.textbbox((2, top + 2), label), fill="black")
        draw.text((2, top + 2), label, fill="white")
    return grid


def write_grids(
    config: EvalConfig, layout: OutputLayout, samples: Sequence[Sample], methods: Sequence[str]
) -> list[Path]:
    """One PNG per dataset and degradation: patches of the first ``config.grid_images`` images,
    LR (nearest-neighbour upscaled) | each method | HR; none when ``grid_images`` is 0."""
    if config.grid_images == 0:
        return []
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[(sample.dataset, sample.degradation)].append(sample)
    written = []
    for (dataset, degradation), group in groups.items():
        rows = []
        for sample in sorted(group, key=lambda s: s.image)[: config.grid_images]:
            lr = load_image(sample.lr)
            box = _crop_box(lr.size, config.grid_crop, config.scale)
            big_box = tuple(config.scale * v for v in box)
            patch = lr.crop(box)
            cells = [patch.resize((patch.width * config.scale, patch.height * config.scale), Image.Resampling.NEAREST)]
            cells += [load_image(layout.sr(dataset, degradation, m, sample.image)).crop(big_box) for m in methods]
            if sample.hr is not None:
                cells.append(load_image(sample.hr).crop(big_box))
            rows.append((sample.image, cells))
        titles = ["LR", *methods, *(["HR"] if group[0].hr is not None else [])]
        written.append(save_image(render_grid(titles, rows), layout.grid(dataset, degradation)))
    return written


def write_scatter(records: Sequence[dict[str, Any]], methods: Sequence[str], path: Path) -> Path | None:
    """PSNR against MANIQA (else NIQE) per method and degradation, pooled over synthetic images; None when the
    records lack PSNR or both perceptual metrics, or matplotlib is not installed."""
    synthetic = [record for record in records if "psnr" in record["metrics"]]
    measured = {metric for record in synthetic for metric in record["metrics"]}
    perceptual = next((metric for metric in PERCEPTUAL_AXES if metric in measured), None)
    if perceptual is None:
        return None
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as error:
        logger.warning("No perception-distortion plot: it needs matplotlib (%s); %s", error, MATPLOTLIB_HINT)
        return None

    points: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for record in synthetic:
        if perceptual in record["metrics"]:
            scores = record["metrics"]
            points[(record["method"], record["degradation"])].append(
                (scores[perceptual]["value"], scores["psnr"]["value"]))
    degradations = list(dict.fromkeys(degradation for _, degradation in points))
    colours = {method: colormaps["tab10"](index % 10) for index, method in enumerate(methods)}
    markers = {degradation: MARKERS[index % len(MARKERS)] for index, degradation in enumerate(degradations)}
    figure = Figure(figsize=(6.4, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for (method, degradation), values in points.items():
        x, y = np.mean(values, axis=0)
        axes.scatter(x, y, color=colours[method], marker=markers[degradation], s=60)
    method_handles = [Line2D([], [], color=colours[m], marker="o", linestyle="", label=m) for m in methods]
    axes.add_artist(axes.legend(handles=method_handles, title="method", fontsize="small", loc="upper right"))
    degradation_handles = [Line2D([], [], color="grey", marker=markers[d], linestyle="", label=d)
                           for d in degradations]
    axes.legend(handles=degradation_handles, title="degradation", fontsize="small", loc="lower left")
    axes.set_xlabel(f"{METRIC_LABELS[perceptual]} ({'lower' if perceptual in LOWER_IS_BETTER else 'higher'} is better)")
    axes.set_ylabel("PSNR, dB (higher is better)")
    axes.set_title("Perception-distortion: means over synthetic images")
    axes.grid(alpha=0.3)
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))


def write_report(
    config: EvalConfig, layout: OutputLayout, methods: Sequence[SuperResolutionMethod],
    samples: Sequence[Sample], records: Sequence[dict[str, Any]],
) -> list[Path]:
    """Grids, the scatter plot and the Markdown and CSV tables; returns the paths written."""
    names = [method.name for method in methods]
    figures = write_grids(config, layout, samples, names)
    scatter = write_scatter(records, names, layout.scatter)
    figures += [scatter] if scatter is not None else []
    markdown = save_text(results_markdown(config, samples, methods, records, figures), layout.table_markdown)
    table = save_text(results_csv(records, names, config.metrics), layout.table_csv)
    return [markdown, table, *figures]
