"""Command line: `python -m cxr {index,train,evaluate,results,predict,ablation,markers,fold-check,notebook}`; `--help` on each."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

from cxr import UserError, ensure_writable

REPO = Path(__file__).resolve().parents[1]
COMMITTED_METRICS = Path("doc") / "metrics.json"  # the metrics document of the committed run (README tables)
BLOCKS = ("summary", "results", "headline", "data")  # the Markdown blocks `python -m cxr results --update` writes


def _config(args: argparse.Namespace):
    """The run's Config: the --mode preset, the command's own flags, then every `--set key=value` on top."""
    from cxr.config import Config, parse_settings

    flags = {k: getattr(args, k, None) for k in ("source", "backbone", "image_size", "seed")}
    overrides = {k: v for k, v in flags.items() if v is not None}  # a flag not given keeps the preset's value
    if getattr(args, "run", None):
        overrides["output_dir"] = args.run
    try:
        return Config.preset(args.mode, **{**overrides, **parse_settings(args.set)})
    except (TypeError, ValueError) as error:  # an unknown or badly typed setting
        raise UserError(f"{error} (see `python -m cxr {args.command} --help`)") from None


def _check_backbone(config) -> None:
    from cxr.model import backbone_names

    names = backbone_names()
    if config.backbone not in names:
        raise UserError(f"unknown backbone {config.backbone!r}: choose one of {', '.join(names)} "
                        "(--set backbone=NAME).")


def cmd_index(args: argparse.Namespace) -> int:
    """Index a zip or folder, or any source `train --source` takes ("kaggle": the Kaggle download), resolved by
    `cxr.data.resolve_source` as the other commands do."""
    from cxr.data import check_source, index_source, resolve_source

    config = _config(args)
    ensure_writable(Path(args.out).parent, "index folder")  # before any download
    check_source(args.source)  # a path that is not a dataset: one line, before anything else
    source = resolve_source(args.source, config.data_dir)
    index_source(config, source, args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cxr import pipeline

    config = _config(args)
    _check_backbone(config)
    study = pipeline.Study(config, tuple(args.tasks), verbose=2 if args.verbose else 0)
    with pipeline.claimed_run(config.run_dir):  # a second run into the same folder stops here, before any work
        study.data()  # data that cannot train the tasks: stop, nothing written
    pipeline.run_study(study, skip=("data",))  # the other steps of pipeline.STEPS, in order
    for task, o in study.outcomes.items():
        print(f"{task}: {o.result.n_folds}-fold ensemble, kept stage {o.result.kept_stage}, threshold "
              f"{o.threshold:.4f} (out-of-fold) -> {o.model_dir}")
    print(_ledger_line(study.run_dir, study.doc))
    return 0


def _ledger_line(run_dir: Path, doc: dict) -> str:
    """The CLI's last line: how many times this run folder's test split has been scored, read from its ledger (a
    killed and re-run `train` scores it again, and says so), and where the metrics are."""
    from cxr.evaluate import ledger

    frame = ledger.read_ledger(run_dir)
    frame = frame[frame["split"].fillna("test") == "test"]
    per_task = ", ".join(f"{t} {k}x" for t, k in frame["task"].value_counts().sort_index().items()) or "never"
    return (f"test split scored {len(frame)} time{'s' if len(frame) != 1 else ''} in this run folder "
            f"({per_task}; ledger {run_dir / ledger.LEDGER_NAME}); {run_dir / 'metrics.json'}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-score the saved models of a run folder on the test split and rewrite its metrics.json."""
    from cxr import data, evaluate, pipeline
    from cxr.config import Config, parse_settings

    run = _config(args).run_dir
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a run folder (no config.json): pass --run DIR, a folder written by "
                        "`python -m cxr train --run DIR` or the notebook.")
    tasks = [t for t in args.tasks if (run / t / "model.keras").is_file()]
    if not tasks:
        raise UserError(f"no saved model in {run} (looked for {', '.join(f'{t}/model.keras' for t in args.tasks)}): "
                        "train first (`python -m cxr train --run DIR`).")
    pipeline.lock_run(run)
    config = Config.load(run / "config.json").replace(output_dir=str(run), **parse_settings(args.set))
    prepared = data.prepare(config)
    doc = pipeline.rescore_run(config, prepared, tasks, run)  # the run's choices and other blocks kept
    print(evaluate.results_table(doc).to_string())
    print(_ledger_line(run, doc))
    return 0


def _metrics_source(args: argparse.Namespace) -> Path:
    """The metrics.json to read: --metrics, else <run>/metrics.json when --run is given, else doc/metrics.json (the
    committed run's, beside the figures)."""
    if args.metrics:
        return Path(args.metrics)
    if args.run:
        return Path(args.run) / "metrics.json"
    if COMMITTED_METRICS.is_file() or not (REPO / COMMITTED_METRICS).is_file():
        return COMMITTED_METRICS
    return Path(os.path.relpath(REPO / COMMITTED_METRICS))


def cmd_results(args: argparse.Namespace) -> int:
    """Write the results tables from a metrics document: print them, or update Markdown files' blocks; with
    --copy-metrics, first copy the document there (`make notebook`: runs/full/metrics.json -> doc/metrics.json),
    so that the tables name the committed copy as their source."""
    from cxr import evaluate, reporting
    from cxr.io import atomic_write_text, update_markdown

    _config(args)  # a bad --mode or --set is an error here too
    source = _metrics_source(args)
    if not source.is_file():
        raise UserError(f"no metrics file at {source}: run the study first (`make run`, or `python -m cxr train "
                        "--run DIR` then --run DIR), or pass --metrics FILE.")
    try:
        doc = evaluate.read_metrics(source)
    except (ValueError, KeyError) as error:
        raise UserError(f"{source} is not a metrics document of this version ({error}): re-run "
                        "`python -m cxr evaluate --run DIR`.") from None
    for target in args.update:  # everything is checked before anything is written
        text = Path(target).read_text() if Path(target).is_file() else None
        if text is None or not any(f"<!-- {m} -->" in text and f"<!-- /{m} -->" in text for m in BLOCKS):
            raise UserError(f"cannot update {target}: " + ("no such file" if text is None else
                            "it has no <!-- results --> ... <!-- /results --> (or summary, headline, data) block")
                            + ".")
        if target.endswith(".ipynb"):
            try:
                json.loads(text)
            except ValueError as error:
                raise UserError(f"cannot update {target}: not a notebook ({error}).") from None
        ensure_writable(Path(target).parent, "folder of")
    if args.copy_predictions:
        if not args.run:
            raise UserError("--copy-predictions needs the run folder: pass --run DIR (its predictions_<task>.csv).")
        try:
            table = evaluate.document.committed_predictions(args.run)
        except ValueError as error:
            raise UserError(str(error)) from None
        ensure_writable(Path(args.copy_predictions).parent, "predictions folder")
    if args.copy_metrics:
        ensure_writable(Path(args.copy_metrics).parent, "metrics folder")
        if Path(args.copy_metrics).resolve() != source.resolve():
            atomic_write_text(args.copy_metrics, source.read_text())
            print(f"copied {source} -> {args.copy_metrics}")
        source = Path(args.copy_metrics)
    label = source.as_posix()
    text = reporting.markdown_results(doc, source=label)
    if args.copy_predictions:
        from cxr.io import atomic_write_csv

        atomic_write_csv(args.copy_predictions, table)
        print(f"wrote {len(table)} predictions of {args.run} -> {args.copy_predictions} "
              f"({Path(args.copy_predictions).stat().st_size / 1e6:.2f} MB)")
    blocks = {"summary": reporting.headline_markdown(doc),
              "results": text, "headline": reporting.markdown_results(doc, label, True),
              "data": reporting.markdown_data(doc, label)}
    for target in args.update:  # every block the file has: summary (the first screen), results (long), headline
        content = Path(target).read_text()  # (short), data (the audit); a notebook: its markdown cells' blocks
        for marker in BLOCKS:
            if f"<!-- {marker} -->" in content and f"<!-- /{marker} -->" in content:
                if target.endswith(".ipynb"):
                    reporting.update_notebook(target, blocks[marker], marker)
                else:
                    update_markdown(target, blocks[marker], marker)
        print(f"updated {target}")
    if not args.update:
        print(text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cxr.predict import model_folder, predict_files

    folder = model_folder(args.model or _config(args).run_dir, args.task)
    if args.gradcam:
        ensure_writable(args.gradcam, "Grad-CAM folder")
    results = predict_files(folder, args.images, gradcam_dir=args.gradcam)
    for r in results:
        print(json.dumps(r))
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"error: {len(failed)} of {len(results)} images could not be read (the JSON lines with \"error\"; the "
              f"others were scored), e.g. {failed[0]['path']}: {failed[0]['error']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_markers(args: argparse.Namespace) -> int:
    """The marker audit: the acquisition stamp and the bold "R" per official split and subtype, the finding in
    words, one CSV row per image (--out) and a grid of stamped examples (--figure), to check the detector by eye."""
    from cxr import data, plots, reporting
    from cxr.data import markers
    from cxr.io import atomic_write_csv

    config = _config(args)
    prepared = data.prepare(config, verbose=False)
    found = markers.detect(prepared.images)
    table = markers.marker_table(prepared.index, found)
    print(table.to_string())
    print(reporting.describe_markers(markers.marker_finding(table)))
    rows = pd_concat_rows(prepared.index[["path", "official_split", "label", "subtype"]], found)
    atomic_write_csv(args.out, rows)
    print(f"wrote {args.out}")
    if args.figure:
        hits = rows.index[rows["stamp"]].tolist()[: args.examples]
        if hits:
            fig = plots.example_grid([prepared.images[i] for i in hits],
                                     [f"{rows.at[i, 'subtype']} ({rows.at[i, 'official_split']}), "
                                      f"{rows.at[i, 'kv_score']:.2f}" for i in hits], ncols=6, size=1.9)
            plots.save_figure(fig, args.figure)
            print(f"wrote {args.figure}")
    return 0


def cmd_fold_check(args: argparse.Namespace) -> int:
    """Random against block folds, with and without the marker zones masked, on frozen features (training children
    only): which validation foresees the test's drop, and does the stamp move the calls (`cxr.foldcheck`)."""
    from cxr import data, foldcheck, train
    from cxr.io import write_json

    config = train.resolve(_config(args))
    prepared = data.prepare(config, verbose=False)
    doc = foldcheck.fold_check(config, prepared)
    doc["command"] = "python -m cxr " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m cxr fold-check"
    write_json(args.out, doc)
    print(foldcheck.table(doc).to_string(index=False))
    print(f"wrote {args.out}")
    return 0


def pd_concat_rows(left, right):
    """`left` and `right` side by side, row for row (both reindexed 0..n-1)."""
    import pandas as pd

    return pd.concat([left.reset_index(drop=True), right.reset_index(drop=True)], axis=1)


def cmd_ablation(args: argparse.Namespace) -> int:
    """Compare candidate recipes by cross-validation on a subset of the training children (never the test)."""
    from cxr import ablation, data, train
    from cxr.io import write_json

    config = train.resolve(_config(args))
    ensure_writable(config.run_dir, "run folder")
    prepared = data.prepare(config, verbose=False)
    doc = ablation.run_ablation(config, prepared, args.candidates, args.fraction, args.dev_images,
                                config.split_seed, config.run_dir / "ablation")
    doc["command"] = "python -m cxr " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m cxr ablation"
    write_json(args.out, doc)
    print(ablation.table(doc).to_string())
    print(f"wrote {args.out}")
    return 0


def cmd_notebook(args: argparse.Namespace) -> int:
    from cxr.config import parse_settings
    from cxr.reporting import run_notebook

    config = _config(args)  # bad settings, backbone, data source or output folder: stop before papermill starts
    _check_backbone(config)
    ensure_writable(config.run_dir, "run folder")
    settings = parse_settings(args.set)
    for name in ("source", "run"):
        if getattr(args, name, None):
            settings["source" if name == "source" else "output_dir"] = getattr(args, name)
    return run_notebook(mode=args.mode, in_place=args.in_place, settings=settings)


def _common(p: argparse.ArgumentParser, run_help: str = "the run folder (default: runs/<mode>)") -> None:
    """The options every command shares: the preset, any Config field, and the run folder."""
    from cxr.presets import MODES

    p.add_argument("--mode", default="full", choices=list(MODES), help="the Config preset (default: full)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any Config field, parsed by its type (repeatable), e.g. --set seed=7 --set weights=none")
    p.add_argument("--run", help=run_help)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (or set CXR_DEBUG=1)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr", description=__doc__)
    from cxr.config import PRIMARY_TASK, TASKS

    sub = parser.add_subparsers(dest="command", required=True)
    tasks = list(TASKS)

    p = sub.add_parser("index", help="index a dataset (zip or folder): counts and skipped files")
    p.add_argument("source")
    p.add_argument("--out", default="index.csv")
    _common(p, "unused here (accepted for symmetry)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("train", help="prepare the data, train each task by cross-validation (the fold ensemble), "
                                     "choose its threshold on the out-of-fold predictions, save the model, score "
                                     "the test split once; write metrics.json")
    _common(p)
    p.add_argument("--tasks", nargs="+", default=tasks, choices=tasks)
    p.add_argument("--source", help="zip or folder of the dataset, or 'kaggle' (default: $CXR_DATA, ../shared, "
                                     "Kaggle, sample)")
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

    p = sub.add_parser("results", help="the results tables as Markdown, from doc/metrics.json (the committed run) "
                                       "or a run's metrics.json")
    _common(p, "a run folder holding metrics.json (default: read doc/metrics.json)")
    p.add_argument("--metrics", metavar="FILE", help="the metrics.json to read (default: <run>/metrics.json with "
                                                     "--run, else doc/metrics.json)")
    p.add_argument("--update", nargs="*", default=[], metavar="FILE",
                   help="replace the <!-- results --> (summary, headline, data) blocks of these Markdown files, or "
                        "of a notebook's markdown cells (.ipynb), instead of printing")
    p.add_argument("--copy-metrics", metavar="FILE",
                   help="copy the metrics document here first (make notebook: doc/metrics.json); the tables then "
                        "name this copy as their source")
    p.add_argument("--copy-predictions", metavar="FILE",
                   help="with --run: write every out-of-fold and test prediction of every task (the run's "
                        "predictions_<task>.csv) into one small CSV here (make notebook: doc/predictions.csv)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("predict", help="score images with a saved model; one JSON line per image")
    p.add_argument("images", nargs="+")
    _common(p, "the run folder whose <task>/ model is used (default: runs/<mode>)")
    p.add_argument("--model", help="a saved model folder, or a run folder (then its <task>/ is used)")
    p.add_argument("--task", default=PRIMARY_TASK, choices=tasks, help="which task's model of a run folder")
    p.add_argument("--gradcam", metavar="OUT_DIR", help="also write a Grad-CAM overlay PNG per image")
    p.set_defaults(func=cmd_predict)

    from cxr.ablation import CANDIDATES

    p = sub.add_parser("ablation", help="compare candidate recipes by cross-validation on a subset of the "
                                        "training children (never the test split); write doc/ablation.json")
    _common(p, "the run folder, for each candidate's result (default: runs/<mode>)")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--fraction", type=float, default=0.35, help="share of the training children of every fold")
    p.add_argument("--dev-images", type=int, default=600, help="held-out images of other training children")
    p.add_argument("--out", default="doc/ablation.json")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("markers", help="the marker audit: burned-in acquisition stamps per split and subtype, one "
                                       "CSV row per image, a grid of stamped examples")
    _common(p, "unused here (accepted for symmetry)")
    p.add_argument("--source", help="zip or folder of the dataset, or 'kaggle' (default: $CXR_DATA, ../shared, "
                                     "Kaggle, sample)")
    p.add_argument("--out", default="markers.csv", help="one row per image: path, split, subtype, kv_score, stamp, "
                                                        "bold_r (default: markers.csv)")
    p.add_argument("--figure", metavar="PNG", help="also draw stamped examples into this PNG")
    p.add_argument("--examples", type=int, default=24, help="stamped examples in the figure (default: 24)")
    p.set_defaults(func=cmd_markers)

    p = sub.add_parser("fold-check", help="random vs block folds, marker zones kept vs masked, on frozen features of "
                                          "the training children (never the test): OOF AUROC, the cross-fitted "
                                          "operating point, the stamp counterfactual")
    _common(p, "unused here (accepted for symmetry)")
    p.add_argument("--source", help="zip or folder of the dataset (default: $CXR_DATA, ../shared, Kaggle, sample)")
    p.add_argument("--out", default="doc/fold_check.json")
    p.set_defaults(func=cmd_fold_check)

    p = sub.add_parser("notebook", help="execute notebook.ipynb headless (papermill) and print the headline metrics")
    _common(p, "the run folder for its outputs (default: runs/<mode>)")
    p.add_argument("--source", help="zip or folder of the dataset, or 'kaggle' (default: $CXR_DATA, ../shared, "
                                     "Kaggle, sample)")
    p.add_argument("--in-place", action="store_true", help="write the executed notebook over notebook.ipynb")
    p.set_defaults(func=cmd_notebook)

    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("CXR_DEBUG", "").strip().lower() in ("1", "true", "yes")
    with _one_line_warnings(debug):
        try:
            return int(args.func(args) or 0)
        except BrokenPipeError:  # `python -m cxr results | head`: the reader left; no traceback about it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as error:  # noqa: BLE001  (sorted below: bad input -> one line; a bug -> traceback)
            message = _user_message(error)
            if debug or message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def _user_message(error: BaseException) -> str | None:
    """The one-line message of an error caused by the user's input, or None for anything else (a bug)."""
    if isinstance(error, UserError):
        text = str(error)
    elif isinstance(error, PermissionError) or (isinstance(error, OSError) and error.errno in (30, 28)):
        text = f"cannot write {error.filename or ''}: {error.strerror}; choose another output path or free space."
    elif isinstance(error, FileNotFoundError) and error.filename:
        text = f"{error.filename} does not exist ({error.strerror}); check the path."
    else:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def _one_line_warnings(debug: bool):
    """Python warnings as one clean line on stderr ("warning: message"), without file paths or source lines;
    each distinct message once. With `debug`, Python's own format."""
    if debug:
        yield
        return
    seen: set[str] = set()
    saved = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


if __name__ == "__main__":
    sys.exit(main())
