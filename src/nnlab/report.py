"""A sweep's report: `python -m nnlab.report <sweep dir>` (and the end of every sweep).

report.html is one self-contained page (plotly.js inlined: it opens without a network) holding the summary tables and
Optuna's plots of the study; plots/*.png are the same plots drawn with matplotlib, for papers and terminals. A plot
that cannot be drawn for this study (importances of a single parameter, the history of a grid) says why instead.
"""

import argparse
import csv
import html
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from nnlab import sweep as S
from nnlab.atomic import atomic_open

log = logging.getLogger("nnlab.report")
HEIGHT = 460  # pixels per plot in the page


@dataclass
class Plot:
    name: str  # plots/<name>.png and the page's section id
    title: str
    about: str
    html: Callable  # study -> plotly figure
    png: Callable  # study -> matplotlib Axes (or an array of them)


def study_from(sweep_dir: Path) -> optuna.Study:
    """The study a sweep directory records: its name and storage from multirun.yaml, else study.db beside it."""
    from omegaconf import OmegaConf

    name, storage = None, None
    config = sweep_dir / "multirun.yaml"
    if config.is_file():
        sweeper = OmegaConf.load(config).hydra.sweeper
        name, storage = sweeper.get("study_name"), sweeper.get("storage")
    url = S.storage_url(storage, sweep_dir)
    if url.startswith("sqlite:") and not (sweep_dir / "study.db").is_file() and storage is None:
        raise FileNotFoundError(f"{sweep_dir} holds no study.db: give the directory of a sweep (outputs/sweeps/<name>)")
    names = optuna.get_all_study_names(S.open_storage(url))
    name = name or (names[0] if len(names) == 1 else None)
    if name not in names:
        raise FileNotFoundError(f"{url} holds no study {name!r} (it holds {', '.join(names) or 'none'})")
    return S.load_study(url, name)


def replicate_figure(study: optuna.Study, metric: str):
    """Each configuration's runs (points) and their mean with its 95% interval (bar): replicates or seeds."""
    import plotly.graph_objects as go

    groups = [g for g in S.groups_of(study) if g.values]
    fig = go.Figure()
    for g in groups:
        e = g.estimate
        label = f"{g.label}: {g.overrides or 'defaults'}"
        fig.add_trace(
            go.Scatter(
                x=[label] * e.n,
                y=e.values,
                mode="markers",
                name="runs",
                showlegend=False,
                marker=dict(color="#888", size=7),
                text=[f"seed {s}" for s in g.seeds],
            )
        )
        high = (e.ci95[1] - e.mean) if e.ci95 else 0
        fig.add_trace(
            go.Scatter(
                x=[label],
                y=[e.mean],
                mode="markers",
                showlegend=False,
                marker=dict(color="#1f77b4", size=12, symbol="diamond"),
                error_y=dict(type="data", array=[high], visible=True),
            )
        )
    fig.update_layout(title=f"{metric}: runs and the mean with its 95% interval", yaxis_title=metric)
    return fig


def replicate_axes(study: optuna.Study, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in S.groups_of(study) if g.values]
    _, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4.5))
    for i, g in enumerate(groups):
        e = g.estimate
        ax.scatter([i] * e.n, e.values, color="#888", s=14, zorder=2)
        high = (e.ci95[1] - e.mean) if e.ci95 else 0
        ax.errorbar([i], [e.mean], yerr=[high], fmt="D", color="#1f77b4", capsize=5, zorder=3)
    ax.set_xticks(range(len(groups)), [g.label for g in groups])
    ax.set_xlabel("configuration (trial)")
    ax.set_ylabel(metric)
    ax.set_title("runs and the mean with its 95% interval")
    return ax


def plots_for(study: optuna.Study, metric: str) -> tuple[list[Plot], dict[str, str]]:
    """The plots that make sense for this study, and why the others are left out."""
    import optuna.visualization as V
    import optuna.visualization.matplotlib as M

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    params = sorted({p for t in trials for p in t.params})
    grid = study.user_attrs.get("grid", bool(trials) and all("fixed_params" in t.system_attrs for t in trials))
    plots, skipped = [], {}
    if any(len(g.values) >= 2 for g in S.groups_of(study)):
        plots.append(
            Plot(
                "replicates",
                "Replicates",
                "Every run of each configuration and the mean with its 95% confidence interval (Student's t).",
                lambda s: replicate_figure(s, metric),
                lambda s: replicate_axes(s, metric),
            )
        )
    if grid:
        skipped["history"] = "a grid runs its points in a fixed order: there is no optimisation history to show"
    else:
        plots.append(
            Plot(
                "history",
                "Optimisation history",
                "Each trial's value in the order trials started, and the best so far.",
                V.plot_optimization_history,
                M.plot_optimization_history,
            )
        )
    if len(params) >= 2 and len(complete) >= 2:
        plots.append(
            Plot(
                "importances",
                "Parameter importances",
                "PED-ANOVA (Optuna's default): how much each parameter matters to reaching the best values, over the "
                "complete trials.",
                V.plot_param_importances,
                M.plot_param_importances,
            )
        )
    else:
        skipped["importances"] = "importances need two or more parameters and two or more complete trials"
    if params and complete:
        plots.append(
            Plot(
                "parallel",
                "Parallel coordinates",
                "One line per complete trial through its parameter values to its value.",
                V.plot_parallel_coordinate,
                M.plot_parallel_coordinate,
            )
        )
        plots.append(
            Plot(
                "slices",
                "Slices",
                "The value against each parameter, one panel per parameter.",
                V.plot_slice,
                M.plot_slice,
            )
        )
    else:
        skipped["parallel"] = skipped["slices"] = "no swept parameter with a complete trial"
    if any(t.intermediate_values for t in trials):
        plots.append(
            Plot(
                "intermediate",
                "Intermediate values",
                "Every trial's pruning metric per epoch (with "
                "replicates, their mean); a pruned trial's curve stops where it was cut.",
                V.plot_intermediate_values,
                M.plot_intermediate_values,
            )
        )
    plots.append(
        Plot("timeline", "Timeline", "When each trial ran, and how it ended.", V.plot_timeline, M.plot_timeline)
    )
    return plots, skipped


def write_png(axes, path: Path):
    import matplotlib.pyplot as plt
    import numpy as np

    fig = np.atleast_1d(axes).flat[0].figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
    fig.tight_layout()
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def number(text: str) -> str:
    """A CSV cell as the page shows it: floats to 6 significant digits."""
    if "." not in text and "e" not in text:
        return text
    try:
        return f"{float(text):.6g}"
    except ValueError:
        return text


def table_html(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(number(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1240px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0 20px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: left; }} th {{ background: #f3f3f3; }}
section.plot {{ margin: 18px 0; }} .chart {{ height: {height}px; width: 1180px; }}
p.note {{ color: #555; }}
</style>
<script>{plotly_js}</script>
</head><body>
<h1>{title}</h1>
<p>{intro}</p>
{tables}
{sections}
{skipped}
</body></html>
"""


def write_report(sweep_dir: Path, study: optuna.Study | None = None) -> Path:
    """report.html and plots/*.png in the sweep directory (the summary files are written afresh first)."""
    from plotly.offline import get_plotlyjs

    sweep_dir = Path(sweep_dir)
    study = study or study_from(sweep_dir)
    metric = study.user_attrs.get("metric", "value")
    S.write_summary(study, sweep_dir, metric)
    plots, skipped = plots_for(study, metric)
    (sweep_dir / "plots").mkdir(exist_ok=True)
    sections = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" notes on its matplotlib plots
        for plot in plots:
            try:
                fig = plot.html(study)
                fig.update_layout(height=HEIGHT, width=1180, margin=dict(t=60, b=50))
                div = fig.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"plot-{plot.name}",
                    default_height=f"{HEIGHT}px",
                    default_width="1180px",
                )
                write_png(plot.png(study), sweep_dir / "plots" / f"{plot.name}.png")
            except Exception as e:  # noqa: BLE001  (one plot that cannot be drawn leaves the others)
                skipped[plot.name] = f"{type(e).__name__}: {e}"
                continue
            sections.append(
                f'<section class="plot" id="{plot.name}"><h2>{html.escape(plot.title)}</h2>'
                f'<p class="note">{html.escape(plot.about)} <a href="plots/{plot.name}.png">PNG</a></p>'
                f'<div class="chart">{div}</div></section>'
            )
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail", "running") if s in states)
    replicates = study.user_attrs.get("replicates", 1)
    intro = (
        f"Study {html.escape(study.study_name)}: {len(states)} trials ({counts})"
        + (f", {replicates} replicates each" if replicates > 1 else "")
        + f"; the objective is {html.escape(metric)} ({study.direction.name.lower()})."
    )
    tables = "<h2>Trials</h2>" + table_html(sweep_dir / "summary.csv")
    if (sweep_dir / "configs.csv").is_file():
        tables += "<h2>Over seeds</h2>" + table_html(sweep_dir / "configs.csv")
    if replicates > 1:
        tables += "<h2>Runs</h2>" + table_html(sweep_dir / "runs.csv")
    left_out = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in skipped.items())
    page = PAGE.format(
        title=html.escape(f"Sweep {study.study_name}"),
        intro=intro,
        tables=tables,
        sections="\n".join(sections),
        skipped=f"<h2>Not drawn</h2><ul>{left_out}</ul>" if left_out else "",
        plotly_js=get_plotlyjs(),
        height=HEIGHT,
    )
    path = sweep_dir / "report.html"
    with atomic_open(path) as f:
        f.write(page.encode())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nnlab.report",
        description="Write report.html and plots/*.png for a sweep (outputs/sweeps/<study name>).",
    )
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        path = write_report(args.sweep_dir)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(f"Report: {path}  (plots in {path.parent / 'plots'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
