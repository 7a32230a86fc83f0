"""The ``calibrew`` command line: ``run``, ``merge``, ``sites``, ``job-script``, ``preprocess``,
``plot``, ``inspect``, ``derive``, ``make-sample``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from rich.console import Console
from rich.markup import escape
from rich.text import Text

import pipeline
from pipeline import __version__
from pipeline.errors import CalibrewError, ConfigError
from pipeline.sites import BUILT_IN, find_profiles, job_script, load_site, site_folders


def _site_options(args: argparse.Namespace) -> dict[str, Any]:
    """``-o KEY=VALUE`` (values read as YAML), ``--lifetime``, ``--adapt MIN MAX``."""
    options: dict[str, Any] = {}
    for item in args.site_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--site-option", [(item, "expected KEY=VALUE")])
        # a value with ':' stays text (YAML 1.1 reads 30:00 as 1800) unless it is a list
        # or mapping
        keep_text = ":" in value and not value.lstrip().startswith(("[", "{"))
        options[key.strip()] = value if keep_text else yaml.safe_load(value)
    if getattr(args, "lifetime", None):
        options["lifetime"] = args.lifetime
    if getattr(args, "adapt", None):
        options["adapt.minimum_jobs"], options["adapt.maximum_jobs"] = args.adapt
    return options


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    pipeline.run_job(args.job, pipeline.RunOptions(
        output=args.output, site=args.site, workers=args.workers,
        site_options=_site_options(args), retries=args.retries, on_bad_file=args.on_bad_file,
        performance_report=args.performance_report, show_progress=not args.no_progress,
        fresh=args.fresh, force=args.force,
    ), console=console)
    return 0


def _cmd_merge(args: argparse.Namespace, console: Console) -> int:
    results = pipeline.merge_job(args.job, args.output)
    assert results.merged is not None
    console.print(f"merged {sum(len(p.datasets) for p in results.merged.processes.values())} "
                  f"dataset(s) into {len(results.merged.processes)} process(es): "
                  + ", ".join(escape(str(p)) for p in results.paths), highlight=False)
    for note in results.merged.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    return 0


def _cmd_sites(args: argparse.Namespace, console: Console) -> int:
    console.print("site profiles are looked for in, in this order (the first of a name wins):")
    for folder in site_folders():
        missing = "" if folder.path.is_dir() else " (no such folder)"
        console.print(f"  {escape(folder.origin)}: {escape(str(folder.path))}{missing}",
                      highlight=False, soft_wrap=True)  # paths whole, to copy
    console.print("site profiles:")
    for name, found in find_profiles().items():
        try:
            site = load_site(name)
            line = escape(f"{site.type}: {site.describe()}" + (f" ({site.description})"
                                                               if site.description else ""))
        except CalibrewError as err:
            line = f"[red]invalid[/]: {escape(str(err))}"
        origin = found.origin if found.origin == BUILT_IN else str(found.path)
        if found.hides:
            origin += ", replacing " + ", ".join(
                f"the {BUILT_IN} one" if hidden.origin == BUILT_IN else str(hidden.path)
                for hidden in found.hides)
        console.print(f"  [bold]{escape(name)}[/]  {line}  {escape(f'[{origin}]')}",
                      highlight=False, soft_wrap=True)
    return 0


def _cmd_job_script(args: argparse.Namespace, console: Console) -> int:
    site = load_site(args.site, _site_options(args))
    print(job_script(site))
    return 0


def _cmd_preprocess(args: argparse.Namespace, console: Console) -> int:
    job, cfg = pipeline.load_job(args.job)
    config_dir = (Path(args.job).parent / job.config).resolve().parent
    for ds in pipeline.make_datasets(cfg, job.datasets, config_dir, job.chunksize or cfg.chunksize,
                                     remote=job.remote):
        console.print(f"{ds.name}: {ds.entries:,} events in {len(ds.chunks)} chunks")
        for chunk in ds.chunks:
            console.print(f"  {chunk.file} [{chunk.start}, {chunk.stop})")
    return 0


def _cmd_plot(args: argparse.Namespace, console: Console) -> int:
    dest = Path(args.dest) if args.dest else Path(args.output) / "plots"
    files = pipeline.plot_output(Path(args.output), dest, variations=args.variations,
                                 top=args.top, formats=[f for f in args.format.split(",") if f])
    console.print(f"{len(files)} plot(s) written to {escape(str(dest))}", highlight=False)
    return 0


def _cmd_make_sample(args: argparse.Namespace, console: Console) -> int:
    path = pipeline.make_sample(args.source, args.out, args.events, seed=args.seed, keep=args.keep,
                       console=console)
    console.print(f"wrote {args.events:,} events to {path}")
    return 0


def _cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    table = pipeline.open_table(args.table)
    if args.json:
        console.print_json(json.dumps(pipeline.describe_table(table), default=str))
    else:
        pipeline.print_table(table, console)
    return 0


def _cmd_derive(args: argparse.Namespace, console: Console) -> int:
    result = pipeline.derive_correction(args.table, args.out, eta_column=args.eta_column,
                               eta_max=args.eta_max, name=args.name, weighted=args.weighted,
                               response_window=tuple(args.response_window))
    console.print(f"fit on {result.rows:,} matched rows (core): gen pT - reco pT = "
                  f"{result.a:.4f} + {result.b:.4f} x min(|eta|, {result.eta_max}) GeV")
    console.print(f"median response reco/gen: {result.response_before:.4f} before, "
                  f"{result.response_after:.4f} after")
    console.print(f"payload: {result.payload}")
    return 0


def _add_site_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--site-option", action="append", metavar="KEY=VALUE",
                        help="override a key of the site profile (repeatable; dotted keys "
                        "for nested ones: adapt.maximum_jobs=20)")
    parser.add_argument("--lifetime", help="batch workers retire after this (e.g. 55m), "
                        "staggered, before the walltime kills them")
    parser.add_argument("--adapt", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="adaptive scaling between MIN and MAX batch jobs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calibrew",
        description="Calibrated, systematically varied histograms from CMS NanoAOD on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"calibrew {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job (jobs/*.yaml)")
    run.add_argument("job", help="job spec YAML")
    run.add_argument("--output", help="output directory (default: the job's 'output')")
    run.add_argument("--site", help="site profile name (calibrew sites lists them) or a "
                     "profile's YAML file (default: the job's 'site')")
    run.add_argument("--workers", type=int, help="worker processes (local site) or batch "
                     "jobs (slurm, htcondor)")
    _add_site_options(run)
    run.add_argument("--retries", type=int, help="times a failed chunk is tried again "
                     "(default: the job's 'retries', 2)")
    run.add_argument("--on-bad-file", choices=["fail", "skip"], help="an unreadable input "
                     "file stops the run (fail, the default) or is left out and reported")
    run.add_argument("--performance-report", metavar="FILE.html",
                     help="save Dask's performance report of the computation")
    run.add_argument("--fresh", action="store_true", help="start again: remove the chunks "
                     "an interrupted run finished and this job's feature tables")
    run.add_argument("--force", action="store_true", help="write into an output directory "
                     "that holds another configuration's outputs, replacing those this job "
                     "writes")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    sites = sub.add_parser("sites", help="list the site profiles: built-in, in cluster/ and "
                           "in $CALIBREW_SITES")
    sites.set_defaults(func=_cmd_sites)

    script = sub.add_parser("job-script", help="print the batch submit script of a site")
    script.add_argument("--site", required=True, help="site profile (slurm, htcondor...)")
    _add_site_options(script)
    script.set_defaults(func=_cmd_job_script)

    merge = sub.add_parser("merge", help="merge a job's per-dataset outputs into normalised "
                           "processes and write the statistical models again (nothing is "
                           "computed)")
    merge.add_argument("job")
    merge.add_argument("--output", help="the output directory (default: the job's)")
    merge.set_defaults(func=_cmd_merge)

    pre = sub.add_parser("preprocess", help="split a job's files into chunks (cached)")
    pre.add_argument("job")
    pre.set_defaults(func=_cmd_preprocess)

    plot = sub.add_parser("plot", help="draw the merged result of a run: data against the "
                          "stacked processes, per histogram and category")
    plot.add_argument("output", help="the run's output directory")
    plot.add_argument("--dest", help="where to write the plots (default: OUTPUT/plots)")
    plot.add_argument("--variations", action="store_true", help="also plot each "
                      "systematic's up and down over the nominal (into DEST/variations)")
    plot.add_argument("--top", type=int, default=5, metavar="N", help="in the variation "
                      "plots, colour and label the N largest systematics (default 5)")
    plot.add_argument("--format", default="png", metavar="FMT[,FMT]", help="file formats, "
                      "comma-separated: png, pdf, svg (default png)")
    plot.set_defaults(func=_cmd_plot)

    inspect = sub.add_parser("inspect", help="schema, rows, variations and provenance of a "
                             "feature table")
    inspect.add_argument("table", help="a table directory (<output>/<dataset>/<name>.zarr)")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    inspect.set_defaults(func=_cmd_inspect)

    derive = sub.add_parser("derive", help="fit the e/gamma energy correction from a matched "
                            "table and write it as a correctionlib payload")
    derive.add_argument("table", help="a matched e/gamma feature table (.zarr)")
    derive.add_argument("--out", required=True, help="payload to write (.json or .json.gz)")
    derive.add_argument("--eta-column", default="sc_eta", help="eta column (default sc_eta)")
    derive.add_argument("--eta-max", type=float, default=2.5,
                        help="|eta| beyond which the correction stays constant")
    derive.add_argument("--name", default="egamma_eta_linear", help="correction name")
    derive.add_argument("--weighted", action="store_true", help="weight rows by 'weight'")
    derive.add_argument("--response-window", type=float, nargs=2, default=(0.5, 1.5),
                        metavar=("LOW", "HIGH"), help="reco/gen pT range of the rows fitted")
    derive.set_defaults(func=_cmd_derive)

    sample = sub.add_parser("make-sample",
                            help="build a large NanoAOD-like file by resampling a small one")
    sample.add_argument("source", help="source NanoAOD file (or data-file name)")
    sample.add_argument("out", help="output ROOT file")
    sample.add_argument("--events", type=int, required=True, help="number of events")
    sample.add_argument("--seed", type=int, default=1, help="resampling seed")
    sample.add_argument("--keep", nargs="*", default=None,
                        help="branch name patterns to keep (fnmatch), default: all")
    sample.set_defaults(func=_cmd_make_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``calibrew`` command."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        return int(args.func(args, console))
    except CalibrewError as err:
        # not wrapped: paths and config keys stay whole, to copy or to search
        Console(stderr=True, soft_wrap=True).print(
            Text("error: ", style="bold red") + Text(str(err)), highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: nothing partial was written; the chunks "
                                   "finished are kept, rerun the same command to resume")
        return 130


def console_main() -> NoReturn:
    """The ``calibrew`` console script: :func:`main`, then the process ends at once.

    Once the command has returned (its Dask client and cluster closed, its outputs
    written), the output streams are flushed and logging is shut down, and the process
    ends with ``os._exit``: the interpreter's teardown (freeing every module and object,
    about 1 s after a run) is skipped, and with it the ``atexit`` handlers, which have
    nothing left to do (distributed's close the clusters and clients already closed). An
    error that :func:`main` does not report ends the process as usual, with its traceback.
    """
    end_process(main())


def end_process(status: int) -> NoReturn:
    """End this process at once with ``status``, as the ``calibrew`` command ends: the
    output streams flushed and logging shut down, then ``os._exit`` (no interpreter
    teardown, no ``atexit`` handlers). For a process whose files and clusters are closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written
            pass
    logging.shutdown()
    os._exit(status)


if __name__ == "__main__":
    console_main()
