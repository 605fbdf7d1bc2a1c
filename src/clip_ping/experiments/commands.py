"""The experiment commands of the CLI: ``clip-ping demo``, ``results`` and ``report``.

Each imports its module only when it runs, so ``clip-ping --help`` stays fast.
"""

from __future__ import annotations

import argparse

from ..flags import COUNT


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, assets=args.assets, jobs=args.jobs)


def _results(args: argparse.Namespace) -> None:
    if args.sweep:
        from .sweep import run_sweep

        markdown = "docs/method.md" if args.markdown == "docs/results.md" else args.markdown
        run_sweep(
            args.sweep,
            args.out,
            args.sweep_seeds,
            args.jobs,
            args.assets,
            markdown,
            finished_only=args.finished_only,
            points=args.sweep_points,
        )
        return
    if args.frontier:
        from .frontier import run_frontier

        run_frontier(args.out, args.markdown)
        return
    if args.ceiling:
        from .ceiling import run_ceiling

        run_ceiling(args.out, args.seeds or 5, args.jobs, args.assets, args.markdown)
        return
    if args.architectures:
        from .architectures import run_architectures

        run_architectures(
            args.out,
            seeds=args.seeds or 3,
            quick=args.quick,
            jobs=args.jobs,
            assets=args.assets,
            markdown=args.markdown,
        )
        return
    if args.curve:
        from .curve import run_curve

        run_curve(
            args.out,
            seeds=args.seeds or 3,
            quick=args.quick,
            jobs=args.jobs,
            assets=args.assets,
            markdown=args.markdown,
        )
        return
    from .results import run_results

    run_results(
        args.out,
        seeds=args.seeds or 5,
        sweep_seeds=args.sweep_seeds,
        ablations=not args.no_ablations,
        quick=args.quick,
        markdown=args.markdown,
        assets=args.assets,
        jobs=args.jobs,
    )


def _report(args: argparse.Namespace) -> None:
    from .report import main

    main(args.runs, args.out)


def _add_demo_flags(parser: argparse.ArgumentParser) -> None:
    """The flags the demo and the results page share: where, how big, how many at once."""
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument(
        "--assets",
        default=None,
        help="asset packages folder (default: $CLIP_PING_ASSETS or .assets)",
    )
    parser.add_argument(
        "--jobs",
        type=COUNT,
        default=None,
        help="runs trained at once, each with an equal share of the cores (default: 2)",
    )


def add_experiment_commands(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="the main job: corpus → training → evaluation")
    _add_demo_flags(demo)
    demo.set_defaults(func=_demo)

    results = commands.add_parser(
        "results",
        help="CLIP vs CLIP-PING over seeds on test, ablations on val → docs/results.md",
    )
    _add_demo_flags(results)
    results.add_argument(
        "--seeds",
        type=COUNT,
        default=None,
        help="CLIP and CLIP-PING runs per method: final runs (5); per student or curve point (3)",
    )
    results.add_argument(
        "--no-ablations", action="store_true", help="only the final runs, not the method sweep"
    )
    results.add_argument(
        "--sweep",
        choices=("recipe", "method", "ceiling", "family"),
        default=None,
        help="instead: sweep the recipe (CLIP and CLIP-PING), CLIP-PING's settings, the "
        "teachers' ceiling's recipe or the guidance family's settings on val, and write the "
        "table into docs/method.md",
    )
    results.add_argument(
        "--ceiling",
        action="store_true",
        help="instead: the teachers' ceiling (frozen teachers, trained heads) over seeds on "
        "test and each student's fraction of it; its section of docs/results.md",
    )
    results.add_argument(
        "--frontier",
        action="store_true",
        help="instead: the accuracy-cost table and figure from the finished runs and "
        "docs/data/model_costs.json (benchmarks/model_costs.py); trains nothing",
    )
    results.add_argument(
        "--architectures",
        action="store_true",
        help="instead: CLIP vs CLIP-PING for a ViT, a ConvNeXt and a MobileViT student, each "
        "one's lr chosen on val; its section of docs/results.md",
    )
    results.add_argument(
        "--curve",
        action="store_true",
        help="instead: the data-efficiency curve (10/25/50/100%% of the training groups), "
        "its section of docs/results.md",
    )
    results.add_argument(
        "--finished-only",
        action="store_true",
        help="with --sweep: train nothing, write the table of the runs finished so far",
    )
    results.add_argument(
        "--sweep-points",
        nargs="+",
        default=None,
        metavar="POINT",
        help="with --sweep: train only these points (names as in the table), e.g. more seeds "
        "for the leaders; the table shows every point's finished runs",
    )
    results.add_argument(
        "--sweep-seeds", type=COUNT, default=3, help="seeds per sweep point and ablation (3)"
    )
    results.add_argument(
        "--markdown",
        default="docs/results.md",
        help="the markdown file written (with --sweep: docs/method.md)",
    )
    results.set_defaults(func=_results)

    report = commands.add_parser("report", help="compare finished runs: table + figures")
    report.add_argument("runs", nargs="+", help="run folders (logs/<name>)")
    report.add_argument("--out", required=True, help="folder for report.md and figures/")
    report.set_defaults(func=_report)
