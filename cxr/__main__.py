"""Command line: `python -m cxr {index,train,evaluate,results,predict,notebook}`; `--help` on each."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _config(args: argparse.Namespace):
    from cxr.config import Config

    overrides = {k: getattr(args, k, None) for k in ("source", "backbone", "image_size", "seed", "output_dir")}
    return Config.preset(args.mode, **overrides)


def cmd_index(args: argparse.Namespace) -> int:
    from cxr.data import index_cli

    return index_cli([args.source, "--out", args.out])


def cmd_train(args: argparse.Namespace) -> int:
    from cxr import data, model, train

    config = _config(args)
    out = Path(config.output_dir)
    prepared = data.prepare(config)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    data.atomic_write_text(out / "index.csv", prepared.index.to_csv(index=False))
    for task in args.tasks:
        result = train.fit(config, prepared.index, prepared.images, task=task, verbose=2 if args.verbose else 0)
        threshold = train.validation_threshold(result.model, config, prepared.index, prepared.images, task)
        model.save_model(result.model, out / task, config, threshold, list(train.TASKS[task][2]))
        train.record(result, config, out / task / "run.json")
        print(f"{task}: kept stage {result.kept_stage}, validation threshold {threshold:.4f} -> {out / task}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr import data, evaluate, model, train
    from cxr.config import Config

    run = Path(args.run)
    config = Config.load(run / "config.json")
    prepared = data.prepare(config)
    tasks = {}
    for task in args.tasks:
        if not (run / task / "model.keras").is_file():
            continue
        m, meta = model.load_model(run / task)
        _, y, p = train.predict_split(m, prepared.index, prepared.images, task, "test", config.batch_size)
        tasks[task] = evaluate.task_report(y, p, meta["threshold"], config)
    doc = evaluate.metrics_document(evaluate.protocol(config, prepared.index), tasks)
    evaluate.write_metrics(run / "metrics.json", doc)
    print(evaluate.results_table(doc).to_string())
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from cxr import evaluate

    source = Path(args.run) / "metrics.json"
    doc = evaluate.read_metrics(source)
    text = evaluate.markdown_results(doc, source=source.as_posix())
    for target in args.update:  # a file with a <!-- headline --> block gets the short version there
        if "<!-- headline -->" in Path(target).read_text():
            evaluate.update_markdown(target, evaluate.markdown_results(doc, source.as_posix(), True), "headline")
        else:
            evaluate.update_markdown(target, text)
        print(f"updated {target}")
    if not args.update:
        print(text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxr.predict import predict_files

    results = predict_files(args.model, args.images, gradcam_dir=args.gradcam)
    for r in results:
        print(json.dumps(r))
    return 0 if all("error" not in r for r in results) else 1


def cmd_notebook(args: argparse.Namespace) -> int:
    from cxr.report import run_notebook

    return run_notebook(mode=args.mode, in_place=args.in_place, source=args.source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a dataset (zip or folder): counts and skipped files")
    p.add_argument("source")
    p.add_argument("--out", default="index.csv")
    p.set_defaults(func=cmd_index)

    for name, func, helptext in (("train", cmd_train, "prepare the data and train, choosing thresholds on validation"),
                                 ("evaluate", cmd_evaluate, "score the test split once; write metrics.json")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--mode", default="full", choices=["full", "smoke"])
        p.add_argument("--tasks", nargs="+", default=["pneumonia", "subtype"], choices=["pneumonia", "subtype"])
        p.set_defaults(func=func)
        if name == "train":
            p.add_argument("--source", help="zip or folder of the dataset (default: $CXR_DATA, ../shared, Kaggle, sample)")
            p.add_argument("--backbone")
            p.add_argument("--image-size", dest="image_size", type=int)
            p.add_argument("--seed", type=int)
            p.add_argument("--out", dest="output_dir", help="run folder (default: the mode's output_dir)")
            p.add_argument("--verbose", action="store_true")
        else:
            p.add_argument("--run", default="runs/latest", help="the run folder written by `train`")

    p = sub.add_parser("results", help="the results tables of a run as Markdown (from its metrics.json)")
    p.add_argument("--run", default="runs/full", help="a run folder holding metrics.json")
    p.add_argument("--update", nargs="*", default=[], metavar="FILE",
                   help="replace the <!-- results --> block of these Markdown files instead of printing")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("predict", help="score images with a saved model; one JSON line per image")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", default="runs/latest/pneumonia", help="a saved model folder")
    p.add_argument("--gradcam", metavar="OUT_DIR", help="also write a Grad-CAM overlay PNG per image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("notebook", help="execute notebook.ipynb headless (papermill) and print the headline metrics")
    p.add_argument("--mode", default="full", choices=["full", "smoke"])
    p.add_argument("--source")
    p.add_argument("--in-place", action="store_true", help="write the executed notebook over notebook.ipynb")
    p.set_defaults(func=cmd_notebook)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
