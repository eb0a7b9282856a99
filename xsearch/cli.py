"""The ``xsearch`` command: run, train, flops, list, dashboard, bench, data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .core.errors import UserError

COMMAND_LINES = (
    ("run [options]", "search, retrain the found network, report (e.g. space=mbv3 strategy=danas)"),
    ("run resume=RUN_DIR", "resume an interrupted run from its last checkpoint"),
    ("train ARCH_JSON [options]", "retrain a found network from scratch (train.epochs=..., data=..., recipe=FILE)"),
    ("tune ARCH_JSON [options]", "tune its training recipe (TPE, search.max_trials=20, search.pruner=...): recipe.yaml"),
    ("tune resume=RUN_DIR", "continue an interrupted tune's study"),
    ("flops ARCH_JSON", "FLOPs (MACs) and parameters of a found network, checked with fvcore"),
    ("flops space=NAME [seed=N]", "a space's FLOPs range and a sampled network's FLOPs, checked with fvcore"),
    ("latency table space=NAME [options]", "time every candidate on the runtime (runtime=onnxruntime|torch, threads=1)"),
    ("latency check space=NAME [options]", "time random networks whole against the table's prediction (networks=30)"),
    ("list [WHAT]", "what there is, with one line each: spaces|strategies|datasets|evaluators|budgets"),
    ("list settings [options]", "every setting and its value for the chosen components (space=, strategy=, ...)"),
    ("dashboard [STORAGE] [port=N] [host=H]", "Optuna dashboard: runs' studies, notes, plots (default runs/xsearch.db)"),
    ("bench NAME [options] [out=FILE.json]", "a benchmark (below); its rows go to out="),
    ("data fashion-coco DIR [options]", "write the built-in COCO data and VOC label maps for data=coco|voc_seg data.root=DIR"),
    ("data folder DIR dataset=NAME [train=N]", "write a dataset (digits, fashion_mnist) as an ImageFolder for data=imagefolder"),
    ("data nas-bench-macro DIR [source=...]", "fetch NAS-Bench-Macro's table (SHA-256 checked) for evaluator=tabular"),
    ("export ARCH_JSON --format F [out=FILE]", "the retrained network as a file, F = onnx|torchscript (weights=none)"),
    ("nni-import EXPORTED.json space=NAME", "an architecture NNI exported as arch.json (out=FILE; README: NNI interop)"),
)


def _first_line(obj: object) -> str:
    import inspect

    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0].rstrip(".") if doc else ""


def usage() -> str:
    """The help text, with the valid names read from the registries (never listed by hand)."""
    from .bench import BENCHMARKS
    from .config import DEFAULT_CHOICES, GROUPS, RunConfig, group_options

    width = max(len(c) for c, _ in COMMAND_LINES) + 2
    lines = ["usage: xsearch COMMAND [FILE] [options]", "", "commands:"]
    lines += [f"  {command:<{width}}{text}" for command, text in COMMAND_LINES]
    lines += ["", "benchmarks (xsearch bench NAME):"]
    lines += [f"  {name:<12}{_first_line(function)}" for name, function in BENCHMARKS.items()]
    lines += ["", "options: one grammar for every command (Hydra's): key=value sets a setting (seed=1,",
              "constraints.flops=5M, search.epochs=6, train.lr=0.1, port=8080) and group=option picks a component:"]
    lines += [f"  {group}={'|'.join(group_options(group))}" for group in (*GROUPS, "budget")]
    lines += ["A component's settings live under space.*, search.* (the strategy), data.*, and train.* (an evaluator",
              "that trains) or evaluator.*; 'xsearch list settings strategy=evolution' shows them with their defaults.",
              "A budget presets run lengths (search.epochs, train.epochs, ...) on the keys the chosen components have;",
              "your own key=value wins. Defaults: " + " ".join(f"{g}={o}" for g, o in DEFAULT_CHOICES.items())
              + f" budget={RunConfig.budget}.",
              "Table search: xsearch run space=nasbench_macro strategy=evolution evaluator=tabular evaluator.table=PATH",
              "              constraints.flops=40M search.max_trials=100"]
    return "\n".join(lines)


def _fmt_seconds(s: float) -> str:
    m, s = divmod(round(s), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def cmd_run(args: list[str]) -> int:
    from .config import compose, validate
    from .pipeline import load_run_config, run

    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume:
        others = [a for a in args if not a.startswith("resume=") and not a.startswith("progress=")]
        if others:
            raise UserError(f"resume=RUN_DIR continues a run with its saved configuration; drop {others}")
        cfg = load_run_config(resume)
        print(f"resuming {resume}", flush=True)
    else:
        cfg = validate(compose(args))
    try:
        out = run(cfg)
    except KeyboardInterrupt:
        where = cfg.get("_run_dir") or "the run folder printed above"
        print(f"\ninterrupted; nothing finished is lost. Resume with: xsearch run resume={where}", file=sys.stderr)
        return 130
    from .core import distributed

    if not distributed.is_main():  # under torchrun rank 0 reports (and wrote) the run
        return 0
    summary = out["summary"]
    print("\n" + "=" * 72)
    print("\n".join(summary_lines(summary)))
    if summary.warning:
        print(f"\nWARNING: {summary.warning}", file=sys.stderr)
    return 0


def summary_lines(summary: Any) -> list[str]:
    """The lines ``xsearch run`` prints for a finished run (a ``pipeline.RunSummary``)."""
    from xsearch.search_spaces import format_flops

    met, search = summary.result, summary.search
    lines = [f"xsearch run finished: {summary.run_dir}", f"  architecture   {' '.join(summary.arch)}"]
    if "benchmark_key" in met:
        lines.append(f"  test accuracy  {100 * met['test_accuracy']:.2f}%  (benchmark table, key "
                     f"{met['benchmark_key']})")
    elif "test_accuracy" in met:
        lines.append(f"  test accuracy  {100 * met['test_accuracy']:.2f}%  (retrained from scratch, "
                     f"{met['train_epochs']} epochs, {met['test_samples']} test images)")
    elif any(k.endswith("_ap") for k in met):  # a downstream task: COCOeval's metrics
        shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in met.items()
                          if k.endswith(("_ap", "_ap50")) and isinstance(v, float))
        lines.append(f"  {summary.evaluator:<14} {shown} (COCOeval, %; {met['train_epochs']} epochs, "
                     f"{met['test_images']} val images; predictions.png)")
    elif "miou" in met:  # semantic segmentation: confusion-matrix metrics
        lines.append(f"  {summary.evaluator:<14} mIoU {100 * met['miou']:.1f}, pixel accuracy "
                     f"{100 * met['pixel_accuracy']:.1f} (%; {met['train_epochs']} epochs, {met['test_images']} val "
                     "images; predictions.png)")
    else:
        lines.append(f"  score          {met['score']:.4g}  ({summary.evaluator} {met.get('proxy', '')})")
    budget = f" (budget {format_flops(summary.flops_budget)})" if summary.flops_budget else ""
    lines.append(f"  FLOPs          {format_flops(summary.flops)} MACs{budget}, params {summary.params / 1e6:.3f}M")
    if summary.latency_ms is not None:
        lines.append(f"  latency        {summary.latency_ms:.3g} ms predicted on {summary.latency_runtime} (budget "
                     f"{summary.latency_budget:g} ms; measure it: xsearch latency check)")
    took = f"  search         {_fmt_seconds(summary.search_seconds)} ({summary.strategy}"
    if summary.stages:
        classes = " -> ".join(str(n) for n, _ in summary.stages)
        alive = " -> ".join(f"{mean:.1f}" for _, mean in summary.stages)
        derived = search.get("derivation")
        derived = (f", derived by inherited {search.get('inherited_metric', 'accuracy')} over "
                   f"{search.get('derivation_queries')} queries" if derived == "accuracy"
                   else ", derived by probability" if derived else "")
        lines.append(f"{took}, classes {classes}, candidates/layer {alive}{derived})")
    elif search.get("queries"):
        diverged = (f"; {search['diverged_queries']} diverged, scored 0" if search.get("diverged_queries") else "")
        if "pruned_queries" in search:  # search.pruner: the queries stopped early and the epochs trained in all
            diverged += (f"; {search['pruned_queries']} pruned by {search['pruner']}, "
                         f"{search.get('epochs_trained', '?')} epochs trained")
        lines.append(f"{took}, {search['queries']} queries to {search.get('scorer', summary.evaluator)}, best at "
                     f"query {search['best_query']}, score {search['score']:.4g}{diverged})")
    else:
        lines.append(f"{took})")
    for phase in search.get("phases") or []:
        lines.append(f"  {phase['phase']:<14} {phase['images']:,} images, {phase['steps']:,} steps "
                     f"({phase['epochs']} epoch{'s' if phase['epochs'] != 1 else ''} on {phase['classes']} classes, "
                     f"{_fmt_seconds(phase['seconds'])})")
    if "train_seconds" in met:
        seen = (f" ({met['train_images_seen']:,} images, {met['train_steps']:,} steps at batch "
                f"{met['train_batch_size']})" if "train_images_seen" in met else "")
        lines.append(f"  retraining     {_fmt_seconds(met['train_seconds'])}{seen}")
    lines.append(f"  run folder     {summary.run_dir}  ({', '.join(summary.files)})")
    lines += [f"  {what:<14} {command}" for what, command in summary.commands]
    return lines


def cmd_train(args: list[str]) -> int:
    from xsearch.evaluators import CLASSIFICATION, task_of
    from xsearch.search_spaces import format_flops, get_space

    from .config import build_data, build_evaluator, compose, validate
    from .core import distributed
    from .export import downstream_record
    from .pipeline import check_arch_data, open_recorder
    from .records import check_run_location, load_arch, read_arch_record

    if not args or "=" in args[0]:
        raise UserError("usage: xsearch train ARCH_JSON [overrides]; ARCH_JSON is a run's arch.json")
    path, overrides = args[0], args[1:]
    space, arch = load_arch(path)
    saved = read_arch_record(path)
    if not any(o.startswith("data=") for o in overrides) and saved.get("data"):
        overrides = [f"data={saved['data']}"] + overrides
    cfg = validate(compose(overrides))
    several = distributed.init(str(cfg.get("device", "auto")))
    check_run_location(cfg["runs_root"], cfg.get("run_dir"))  # before loading data
    evaluator = build_evaluator(cfg)
    if several and not (evaluator.trains and evaluator.data_parallel):
        raise UserError(f"torchrun with several processes retrains with evaluator=classification; got "
                        f"evaluator={cfg['evaluator']['name']}: run it as a single process (plain 'xsearch train')")
    data = build_data(cfg)
    evaluator.check_data(data)
    downstream = task_of(evaluator).name != CLASSIFICATION.name
    if downstream and space.task == CLASSIFICATION.name:  # a found backbone, rebuilt for the task's images
        c, h, _ = data.input_shape
        space = get_space(space.name, **{**space.space_kwargs, "num_classes": data.num_classes, "in_chans": c,
                                         "image_size": h})
        arch = space.validate(arch)
    else:
        check_arch_data(space, data, cfg["data"]["name"])
    evaluator.check(space)
    recorder, _ = open_recorder(cfg, space, "train")  # under torchrun rank 0 writes the folder, the others read
    if not distributed.is_main():
        evaluator.evaluate(space, arch, data, seed=cfg["seed"], workdir=recorder.run_dir)
        return 0
    print(f"retraining {format_flops(space.flops(arch))}-MAC network in {recorder.run_dir}", flush=True)
    metrics = evaluator.evaluate(space, arch, data, seed=cfg["seed"], workdir=recorder.run_dir)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    extra = {"downstream": downstream_record(cfg, data)} if downstream else {}  # what export rebuilds the model from
    recorder.save_arch(arch, metrics=scalars if downstream else {"test_accuracy": metrics["test_accuracy"]},
                       data=cfg["data"]["name"], evaluator=cfg["evaluator"]["name"], trained_from=str(path), **extra)
    recorder.write_metrics(metrics)
    if downstream:
        shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in scalars.items() if k.endswith(("_ap", "_ap50")))
        if "miou" in scalars:  # semantic segmentation
            shown = f"miou {100 * scalars['miou']:.1f}, pixel_accuracy {100 * scalars['pixel_accuracy']:.1f} (%)"
        else:
            shown += " (COCOeval, %)"
        print(f"{shown} after {metrics['train_epochs']} epochs; weights in {recorder.path('model.pt')}, "
              f"predictions in {recorder.path('predictions.png')}")
        return 0
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['train_epochs']} epochs; "
          f"weights in {recorder.path('model.pt')}")
    return 0


def cmd_tune(args: list[str]) -> int:
    from .tune import run_tune, summary_lines, tune_config

    cfg, arch_path = tune_config(args)
    try:
        result = run_tune(cfg, arch_path)
    except KeyboardInterrupt:
        where = cfg.get("_run_dir") or "the run folder printed above"
        print(f"\ninterrupted; finished trials are in the study. Resume with: xsearch tune resume={where}",
              file=sys.stderr)
        return 130
    print("\n" + "=" * 72)
    print("\n".join(summary_lines(result, cfg)))
    return 0


def cmd_flops(args: list[str]) -> int:
    from xsearch.search_spaces import format_flops

    from .core.flops import fvcore_macs
    from .records import load_arch

    if len(args) == 1 and "=" not in args[0]:
        space, arch = load_arch(args[0])
    elif args and all("=" in a for a in args) and any(a.startswith("space=") for a in args):
        space, arch = _sampled_arch(args)
    else:
        raise UserError("usage: xsearch flops ARCH_JSON | xsearch flops space=NAME [space.KEY=VALUE ...] [seed=N]")
    table, counted = space.flops(arch), fvcore_macs(space.build(arch), space.input_shape)
    print(f"space     {space.name} {space.space_kwargs}")
    print(f"FLOPs     {table} MACs ({format_flops(table)}), from the space's table")
    print(f"fvcore    {counted} MACs (conv + linear + matmul + deform_conv2d), "
          f"{'equal' if counted == table else 'DIFFERENT'}")
    print(f"params    {space.params(arch)} ({space.params(arch) / 1e6:.3f}M)")
    timm_def = space.to_timm(arch)
    if timm_def:
        print("timm      " + " | ".join(",".join(stage) for stage in timm_def))
    return 0 if counted == table else 1


def _sampled_arch(overrides: list[str]):
    """A space from config overrides and an architecture sampled from it (``seed``), with the space's range."""
    from xsearch.search_spaces import format_flops

    from .config import build_space, compose, validate

    cfg = validate(compose(overrides))
    space = build_space(cfg, None)
    arch = space.sample(seed=cfg["seed"], max_flops=cfg["constraints"]["flops"])
    sizes = [len(c.options) for c in space.choices]
    print(f"range     {format_flops(space.min_flops())} to {format_flops(space.max_flops())} MACs over "
          f"{len(sizes)} choices of {min(sizes)} to {max(sizes)} options")
    print(f"arch      (sampled, seed {cfg['seed']}) {arch}")
    return space, arch


def cmd_list(args: list[str]) -> int:
    import yaml

    from .config import KINDS, compose, group_options, validate

    if args and args[0] == "settings":
        cfg = validate(compose(args[1:]))
        shown = {k: v for k, v in cfg.items() if k in (*KINDS, "search", "train", "budget", "constraints")}
        print(yaml.safe_dump(shown, sort_keys=False).rstrip())
        return 0

    def described(group: str) -> list[tuple[str, str]]:
        if group == "budget":
            return [(name, _budget_line(name)) for name in group_options("budget")]
        return [(name, _first_line(KINDS[group].registry.get(name))) for name in group_options(group)]

    what = {"spaces": "space", "strategies": "strategy", "datasets": "data", "evaluators": "evaluator",
            "budgets": "budget"}
    if len(args) > 1 or (args and args[0] not in what):
        raise UserError(f"usage: xsearch list [{'|'.join(what)}] | xsearch list settings [options]; "
                        f"got {' '.join(args)!r}")
    for key in args or list(what):
        items = described(what[key])
        width = max(len(name) for name, _ in items) + 2
        print(f"{key} ({what[key]}=NAME):")
        for name, line in items:
            print(f"  {name:<{width}}{line}")
    return 0


def _budget_line(name: str) -> str:
    """A budget preset's description: the first comment line of its file."""
    from .config import CONF_DIR

    for line in (CONF_DIR / "budget" / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


def cmd_dashboard(args: list[str]) -> int:
    from .config import compose
    from .dashboard import artifact_dir, check_port, served_storage

    if any(a.startswith("--") for a in args):
        raise UserError("xsearch dashboard takes key=value options like every xsearch command: write port=8080 "
                        "host=127.0.0.1, not --port 8080")
    if args and ("=" not in args[0] or "://" in args[0]):  # the storage URL or file, as run prints it
        args = [f"storage={args[0]}", *args[1:]]
    cfg = compose(args, config="dashboard")
    storage = cfg.storage
    if storage is None:
        db = Path("runs/xsearch.db")
        if not db.exists():
            raise UserError("no runs/xsearch.db here; run 'xsearch run' first or pass a storage URL "
                            "(e.g. xsearch dashboard sqlite:///path/to/xsearch.db)")
        storage = f"sqlite:///{db.resolve()}"
    elif "://" not in storage:
        if not Path(storage).is_file():
            raise UserError(f"storage {storage!r} is neither a URL nor an existing SQLite file")
        storage = f"sqlite:///{Path(storage).resolve()}"
    # every check before serving: a bad port or address, a missing or empty storage, no server
    port = check_port(cfg.host, cfg.port)
    rdb, studies = served_storage(storage)
    artifacts = Path(cfg.artifacts) if cfg.artifacts else artifact_dir(storage, "runs")
    if cfg.artifacts and not artifacts.is_dir():
        raise UserError(f"artifacts={cfg.artifacts!r} is not a folder; pass the artifacts/ folder beside the "
                        "runs' xsearch.db (or leave artifacts= out)")
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    store = FileSystemArtifactStore(artifacts) if artifacts.is_dir() else None
    shown = f"plots from {artifacts}" if store else f"no plots ({artifacts} does not exist)"
    print(f"Optuna dashboard on http://{cfg.host}:{port} for {storage}: {len(studies)} studies, {shown} "
          "(Ctrl-C to stop)", flush=True)
    try:
        run_server(rdb, host=cfg.host, port=port, artifact_store=store)
    except OSError as exc:  # the port was taken between the check and the start
        raise UserError(f"cannot serve on {cfg.host}:{port}: {exc.strerror or exc}; choose another port=") from None
    except KeyboardInterrupt:
        pass
    return 0


def cmd_bench(args: list[str]) -> int:
    from .bench import BENCHMARKS

    if not args or args[0] not in BENCHMARKS:
        raise UserError(f"usage: xsearch bench NAME [options] [out=FILE.json]; available benchmarks: "
                        f"{', '.join(BENCHMARKS)}")
    BENCHMARKS[args[0]](args[1:])
    return 0


DATA_OPTIONS = {"train": int, "val": int, "seed": int, "size": int, "fashion_root": str, "progress": bool}
DATA_USAGE = ("usage: xsearch data fashion-coco DIR [train=4000] [val=500] [seed=0] [size=128] [fashion_root=DIR] "
              "[progress=true], or xsearch data folder DIR [dataset=NAME] [train=N] [val=N] [seed=0], or xsearch data "
              "nas-bench-macro DIR [source=URL_OR_PATH]")


def cmd_data(args: list[str]) -> int:
    from .datasets import write_fashion_coco

    if len(args) >= 2 and args[0] == "folder" and "=" not in args[1]:
        return _data_folder(args[1], args[2:])
    if len(args) >= 2 and args[0] == "nas-bench-macro" and "=" not in args[1]:
        return _data_nas_bench_macro(args[1], args[2:])
    if len(args) < 2 or args[0] != "fashion-coco" or "=" in args[1]:
        raise UserError(f"{DATA_USAGE}; got {' '.join(args)!r}" if args else DATA_USAGE)
    out_dir, options = args[1], {}
    for arg in args[2:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in DATA_OPTIONS:
            raise UserError(f"{arg!r} is not an option of xsearch data fashion-coco; valid: "
                            f"{', '.join(k + '=' for k in DATA_OPTIONS)}")
        kind = DATA_OPTIONS[key]
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise UserError(f"{key} must be true or false; got {value!r}")
            options[key] = value.lower() in ("true", "1", "yes")
        elif kind is int:
            try:
                options[key] = int(value)
            except ValueError:
                raise UserError(f"{key} must be an integer; got {value!r}") from None
        else:
            options[key] = value
    show_progress = options.pop("progress", sys.stderr.isatty())
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"{out_dir} exists and is not a folder")
    counts = write_fashion_coco(out_dir, show_progress=show_progress, **options)
    print(f"wrote fashion-coco to {out_dir} in {_fmt_seconds(counts['seconds'])}: "
          f"{counts['train_images']} train images ({counts['train_objects']} objects) in {out_dir}/train/, "
          f"{counts['val_images']} val images ({counts['val_objects']} objects) in {out_dir}/val/, "
          f"annotations in {out_dir}/annotations/ (instances_*.json, keypoints_*.json)")
    print(f"use it with: xsearch train runs/<run>/arch.json evaluator=detection data=coco data.root={out_dir} "
          "(or evaluator=segmentation, keypoints), or xsearch run space=dyhead strategy=danas evaluator=detection "
          f"data=coco data.root={out_dir}")
    return 0


def _data_folder(out_dir: str, args: list[str]) -> int:
    """``xsearch data folder DIR dataset=NAME [train=N] [val=N] [seed=0] [root=DIR]``: a dataset as an ImageFolder."""
    from .datasets import in_memory_datasets, load_dataset, write_image_folder
    from .records import check_writable

    options: dict[str, Any] = {"dataset": "fashion_mnist", "train": None, "val": None, "seed": 0, "root": None}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in options:
            raise UserError(f"{arg!r} is not an option of xsearch data folder; {FOLDER_USAGE}")
        if key in ("train", "val", "seed"):
            try:
                options[key] = int(value)
            except ValueError:
                raise UserError(f"{key} must be an integer; got {value!r}") from None
            if options[key] < (0 if key == "seed" else 1):
                raise UserError(f"{key} must be at least {0 if key == 'seed' else 1}; got {value}")
        else:
            options[key] = value
    names = in_memory_datasets()
    if options["dataset"] not in names:
        raise UserError(f"dataset={options['dataset']!r} cannot be written as a folder; valid: {', '.join(names)}")
    if Path(out_dir).exists() and (not Path(out_dir).is_dir() or any(Path(out_dir).iterdir())):
        raise UserError(f"{out_dir} exists and is not an empty folder; name a new one")
    check_writable(out_dir, "DIR")
    data = load_dataset(options["dataset"], root=options["root"])
    counts = write_image_folder(data, out_dir, options["train"], options["val"], options["seed"])
    print(f"wrote {options['dataset']} to {out_dir}: {counts['train']} training images in {out_dir}/train/<class>/, "
          f"{counts['val']} test images in {out_dir}/val/<class>/")
    print(f"use it with: xsearch run data=imagefolder data.root={out_dir} data.image_size=28")
    return 0


def _data_nas_bench_macro(out_dir: str, args: list[str]) -> int:
    """``xsearch data nas-bench-macro DIR [source=URL_OR_PATH]``: the table, checksum-checked (``core.nasbench``)."""
    from .core.nasbench import fetch_nas_bench_macro

    options = dict(arg.partition("=")[::2] for arg in args)
    if any("=" not in arg for arg in args) or set(options) - {"source"}:
        raise UserError(f"usage: xsearch data nas-bench-macro DIR [source=URL_OR_PATH]; got {' '.join(args)!r}")
    got = fetch_nas_bench_macro(out_dir, options.get("source"))
    print(f"wrote {got['table']} ({got['bytes']:,} bytes, SHA-256 {got['sha256']} as expected) from {got['source']}, "
          f"and its licence note {got['notice']}")
    print(f"use it with: xsearch run space=nasbench_macro strategy=evolution evaluator=tabular "
          f"evaluator.table={got['table']} constraints.flops=30M, or xsearch bench strategies "
          f"evaluator.table={got['table']}")
    return 0


FOLDER_USAGE = "usage: xsearch data folder DIR [dataset=fashion_mnist|digits|...] [train=N] [val=N] [seed=0] [root=DIR]"


def cmd_export(args: list[str]) -> int:
    from .export import export, parse_args

    result = export(parse_args(args))
    weights = result["weights"] or "none: the UNTRAINED network (weights=none)"
    if result.get("evaluator"):  # a downstream model
        print(f"wrote {result['out']} (onnx, the {result['evaluator']} model around {result['space']}: "
              f"{result['inputs']}; outputs {result['outputs']}; weights {weights})")
        print(f"checked: onnxruntime outputs equal the PyTorch model's on {result['checked_on']} within "
              f"{result['max_abs_diff']:.1e}")
        return 0
    print(f"wrote {result['out']} ({result['format']}, {result['space']}, input (batch, "
          f"{', '.join(map(str, result['input_shape']))}) normalised images, output (batch, {result['num_classes']}) "
          f"logits; weights {weights})")
    checker = "onnxruntime" if result["format"] == "onnx" else "torch.jit.load"
    print(f"checked: {checker} output equals the PyTorch network's within {result['max_abs_diff']:.1e}")
    return 0


def cmd_nni_import(args: list[str]) -> int:
    from .nni import nni_import

    return nni_import(args)


def cmd_latency(args: list[str]) -> int:
    from .latency import command

    return command(args)


COMMANDS = {"run": cmd_run, "train": cmd_train, "tune": cmd_tune, "flops": cmd_flops, "latency": cmd_latency,
            "list": cmd_list,
            "dashboard": cmd_dashboard, "bench": cmd_bench, "data": cmd_data, "export": cmd_export,
            "nni-import": cmd_nni_import}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"xsearch: error: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}.\n\n{usage()}",
              file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except UserError as exc:
        print(f"xsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
