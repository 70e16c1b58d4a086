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
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from nnlab import sweep as S
from nnlab.atomic import atomic_open
from nnlab.upstream import id_of

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
    where = sweep_dir / "study.db" if storage is None else url
    try:
        names = optuna.get_all_study_names(S.open_storage(url, create=False))
    except S.StudyGone as e:
        raise FileNotFoundError(str(e)) from None
    except Exception as e:  # noqa: BLE001  a damaged or foreign database: SQLAlchemy's and Optuna's errors are many
        raise FileNotFoundError(f"{where} cannot be read as a study ({type(e).__name__}: {str(e)[:120]})") from None
    if not names:
        raise FileNotFoundError(
            f"{where} holds no study: the sweep stopped before its study began. Run the sweep again to make one"
        )
    if name is None and len(names) > 1:
        raise FileNotFoundError(
            f"{where} holds {len(names)} studies ({', '.join(names)}) and no multirun.yaml names one of them"
        )
    name = name or names[0]
    if name not in names:
        raise FileNotFoundError(f"{where} holds no study {name!r} (it holds {', '.join(names)})")
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


def plottable(study: optuna.Study) -> optuna.Study:
    """The study as its plots should read it: a grid's values are the override strings they came from ('0.001'),
    which Optuna draws as quoted categories; parameters whose values are all numbers become numbers here (on a log
    axis when they are positive and span a factor of 10 or more, as learning rates do). A copy in memory: the stored
    study is not touched."""
    trials = study.get_trials(deepcopy=False)
    numeric = {}
    for name in sorted({p for t in trials for p in t.params}):
        dists = [t.distributions[name] for t in trials if name in t.distributions]
        if not all(isinstance(d, optuna.distributions.CategoricalDistribution) for d in dists):
            continue
        try:
            values = sorted({float(c) for d in dists for c in d.choices})
        except (TypeError, ValueError):
            continue
        if len(values) >= 2:
            low, high = values[0], values[-1]
            numeric[name] = optuna.distributions.FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    if not numeric:
        return study
    copy = optuna.create_study(direction=study.direction, study_name=study.study_name)
    for t in trials:
        copy.add_trial(
            optuna.trial.FrozenTrial(
                number=t.number,
                trial_id=id_of(t),
                state=t.state,
                value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
                params={k: float(v) if k in numeric else v for k, v in t.params.items()},
                distributions={k: numeric.get(k, d) for k, d in t.distributions.items()},
                user_attrs=t.user_attrs,
                system_attrs={k: v for k, v in t.system_attrs.items() if k != "fixed_params"},
                intermediate_values=t.intermediate_values,
            )
        )
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    return copy


# Optuna colours trials by value on plotly's and matplotlib's "Blues", whose low end is white: on a white page the
# worst trial's line or point was not there to see. Its darker part keeps the order and every trial visible.
SHADES = ["#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b"]


def visible(fig):
    """A plotly figure's colours moved from Blues to SHADES: colour scales (a slice plot's points, a colour bar), and
    the colours the parallel-coordinates plot computed from Blues for each trial's line."""
    import plotly.colors

    scale = [[i / (len(SHADES) - 1), c] for i, c in enumerate(SHADES)]
    blues = plotly.colors.sample_colorscale("Blues", [i / 200 for i in range(201)], colortype="tuple")
    for trace in fig.data:
        marker = getattr(trace, "marker", None)
        if marker is not None and marker.colorscale is not None:
            marker.colorscale = scale
        line = getattr(trace, "line", None)
        if line is not None and isinstance(line.color, str) and line.color.startswith("rgb("):
            rgb = [float(v) / 255 for v in line.color[4:-1].split(",")]
            at = min(range(len(blues)), key=lambda i: sum((a - b) ** 2 for a, b in zip(blues[i], rgb))) / 200
            line.color = plotly.colors.sample_colorscale(scale, [at])[0]  # the same place on the visible scale
    return fig


def visible_axes(axes):
    """The same for matplotlib: every collection coloured by value gets SHADES as its colour map."""
    import numpy as np
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("shades", SHADES)
    for ax in np.atleast_1d(axes).flat:
        for collection in ax.collections:
            if collection.get_array() is not None:
                collection.set_cmap(cmap)
    return axes


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


def cell(column: str, text: str, sweep_dir: Path) -> str:
    """A CSV cell as the page shows it; a run's folder as a link relative to the page, which holds wherever the sweep
    folder is moved."""
    if column == "run_dir" and text:
        name = Path(text).name
        return f'<a href="{html.escape(urllib.parse.quote(name))}/">{html.escape(name)}</a>'
    return html.escape(number(text))


def table_html(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(c, v, path.parent)}</td>" for c, v in zip(rows[0], r)) + "</tr>" for r in rows[1:]
    )
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
        drawn = plottable(study)
        for plot in plots:
            try:
                fig = visible(plot.html(drawn))
                fig.update_layout(height=HEIGHT, width=1180, margin=dict(t=60, b=50))
                div = fig.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"plot-{plot.name}",
                    default_height=f"{HEIGHT}px",
                    default_width="1180px",
                )
                write_png(visible_axes(plot.png(drawn)), sweep_dir / "plots" / f"{plot.name}.png")
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


def main(argv=None, prog: str = "python -m nnlab.report") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
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
