"""Command line: `python -m cxr {index,train,evaluate,results,predict,notebook}`; `--help` on each."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config(args: argparse.Namespace):
    """The run's Config: the --mode preset, the command's own flags, then every `--set key=value` on top."""
    from cxr.config import Config, parse_settings

    flags = {k: getattr(args, k, None) for k in ("source", "backbone", "image_size", "seed")}
    overrides = {k: v for k, v in flags.items() if v is not None}  # a flag not given keeps the preset's value
    if getattr(args, "run", None):
        overrides["output_dir"] = args.run
    return Config.preset(args.mode, **{**overrides, **parse_settings(args.set)})


def cmd_index(args: argparse.Namespace) -> int:
    from cxr.data import index_cli

    config = _config(args)
    argv = [args.source, "--out", args.out, "--data-dir", config.data_dir, "--seed", str(config.seed),
            "--val-fraction", str(config.val_fraction)]
    return index_cli(argv + ([] if config.exclude_test_patients else ["--keep-test-patients"]))


def cmd_train(args: argparse.Namespace) -> int:
    from cxr import data, pipeline
    from cxr.io import atomic_write_csv

    config = _config(args)
    prepared = data.prepare(config)
    outcomes, doc = pipeline.run_study(config, prepared, args.tasks, verbose=2 if args.verbose else 0)
    atomic_write_csv(config.run_dir / "index.csv", prepared.index)
    for task, o in outcomes.items():
        print(f"{task}: kept stage {o.result.kept_stage}, validation threshold {o.threshold:.4f} -> {o.model_dir}")
    print(f"test scored once; {config.run_dir / 'metrics.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-score the saved models of a run folder on the test split and rewrite its metrics.json."""
    from cxr import data, evaluate, model, pipeline
    from cxr.config import Config, parse_settings

    run = _config(args).run_dir
    config = Config.load(run / "config.json").replace(output_dir=str(run), **parse_settings(args.set))
    prepared = data.prepare(config)
    reports = {}
    for task in args.tasks:
        if not (run / task / "model.keras").is_file():
            continue
        reports[task] = pipeline.evaluate_saved(config, prepared, task, run / task, run)
    doc = pipeline.write_metrics(config, prepared, reports, run)
    print(evaluate.results_table(doc).to_string())
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from cxr import evaluate
    from cxr.io import update_markdown

    source = _config(args).run_dir / "metrics.json"
    doc = evaluate.read_metrics(source)
    text = evaluate.markdown_results(doc, source=source.as_posix())
    for target in args.update:  # a file with a <!-- headline --> block gets the short version there
        if "<!-- headline -->" in Path(target).read_text():
            update_markdown(target, evaluate.markdown_results(doc, source.as_posix(), True), "headline")
        else:
            update_markdown(target, text)
        print(f"updated {target}")
    if not args.update:
        print(text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxr.predict import model_folder, predict_files

    folder = model_folder(args.model or _config(args).run_dir, args.task)
    results = predict_files(folder, args.images, gradcam_dir=args.gradcam)
    for r in results:
        print(json.dumps(r))
    return 0 if all("error" not in r for r in results) else 1


def cmd_notebook(args: argparse.Namespace) -> int:
    from cxr.report import run_notebook

    from cxr.config import parse_settings

    return run_notebook(mode=args.mode, in_place=args.in_place, source=args.source, output_dir=args.run,
                        settings=parse_settings(args.set))


def _common(p: argparse.ArgumentParser, run_help: str = "the run folder (default: runs/<mode>)") -> None:
    """The options every command shares: the preset, any Config field, and the run folder."""
    p.add_argument("--mode", default="full", choices=["full", "smoke"], help="the Config preset (default: full)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any Config field, parsed by its type (repeatable), e.g. --set seed=7 --set weights=none")
    p.add_argument("--run", help=run_help)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tasks = ["pneumonia", "subtype"]

    p = sub.add_parser("index", help="index a dataset (zip or folder): counts and skipped files")
    p.add_argument("source")
    p.add_argument("--out", default="index.csv")
    _common(p, "unused here (accepted for symmetry)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("train", help="prepare the data, train each task, threshold on validation, save the model, "
                                     "score the test split once; write metrics.json")
    _common(p)
    p.add_argument("--tasks", nargs="+", default=tasks, choices=tasks)
    p.add_argument("--source", help="zip or folder of the dataset (default: $CXR_DATA, ../shared, Kaggle, sample)")
    p.add_argument("--backbone")
    p.add_argument("--image-size", dest="image_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", dest="run", help="the run folder (same as --run)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-score a run's saved models on the test split; rewrite its metrics.json")
    _common(p, "the run folder written by `train` (default: runs/<mode>)")
    p.add_argument("--tasks", nargs="+", default=tasks, choices=tasks)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("results", help="the results tables of a run as Markdown (from its metrics.json)")
    _common(p, "a run folder holding metrics.json (default: runs/<mode>)")
    p.add_argument("--update", nargs="*", default=[], metavar="FILE",
                   help="replace the <!-- results --> block of these Markdown files instead of printing")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("predict", help="score images with a saved model; one JSON line per image")
    p.add_argument("images", nargs="+")
    _common(p, "the run folder whose <task>/ model is used (default: runs/<mode>)")
    p.add_argument("--model", help="a saved model folder, or a run folder (then its <task>/ is used)")
    p.add_argument("--task", default="pneumonia", choices=tasks, help="which task's model of a run folder")
    p.add_argument("--gradcam", metavar="OUT_DIR", help="also write a Grad-CAM overlay PNG per image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("notebook", help="execute notebook.ipynb headless (papermill) and print the headline metrics")
    _common(p, "the run folder for its outputs (default: runs/<mode>)")
    p.add_argument("--source")
    p.add_argument("--in-place", action="store_true", help="write the executed notebook over notebook.ipynb")
    p.set_defaults(func=cmd_notebook)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as error:  # a bad --set, an unknown mode or value: one clear line, no traceback
        if "--set" in str(error) or "unknown" in str(error) or "must be" in str(error):
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
