"""Train on Kaggle's GPUs from here: push the experiment as a script kernel, watch it, download its outputs, check
them and install them as weights/<exp>/, as `python -m pipeline.train` would have written it here.

    python -m pipeline.make_folds                                     # once: the kernel trains on these folds too
    python -m pipeline.remote --exp r18 --model resnet18 --epochs 10  # train's flags; T4x2, folds in parallel
    python -m pipeline.remote --exp r18 --attach                      # after Ctrl-C: watch it again, then install
    python -m pipeline.remote --exp r18 --resume                      # a run that stopped at --hours: continue it
    python -m pipeline.remote --exp r18 --folds 0,1                   # two folds there; here: train --fold 2,3,4

Takes every flag of `python -m pipeline.train` (the same experiment, recipe and folds), and:
  --competition SLUG  the competition whose data the kernel mounts (its rules must be accepted)
  --accelerator       T4x2 (default) or P100;  --hours  training per kernel run (default 11.5 of Kaggle's 12)
Pushes (each reused while its content hash is unchanged) the code dataset USER/pipeline-code, the run dataset
USER/<exp>-train-run (train.json, folds.csv, folds.json) and the kernel USER/<exp>-train; builds them under
--remote-dir (git-ignored), where the outputs of each kernel version are downloaded too (<slug>/output/v<N>/).
"""
from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from pipeline import kaggle_client
from pipeline.config import TRAIN_FLAGS, Config, command, parse_stage
from pipeline.errors import PipelineError, main_guard
from pipeline.experiment import CVSummary, experiment_dir, format_cv
from pipeline.folds import read_description
from pipeline.io import read_json, write_json
from pipeline.remote import build, install, kernel

FLAGS = TRAIN_FLAGS + ["competition", "accelerator", "attach", "poll", "hours", "remote_dir"]
CODE_SLUG = "pipeline-code"


def names(user: str, exp: str) -> dict:
    """The kernel and its two datasets, from the experiment's name (a lower-case slug, hashed where needed)."""
    slug = kaggle_client.default_slug((exp,)).removesuffix("-weights") + "-train"
    return {"slug": slug, "kernel": f"{user}/{slug}", "run": f"{user}/{slug}-run", "code": f"{user}/{CODE_SLUG}"}


def connect(competition: str):
    """The authenticated client, after the username (needed to name what is pushed) and the rules are checked."""
    user = kaggle_client.kaggle_username()
    if user == "your-kaggle-username":
        raise PipelineError("kaggle: no username (set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in "
                            "~/.kaggle/); nothing was uploaded")
    api = kaggle_client.authenticated()
    kernel.check_rules(api, competition)
    return api, user


def state_path(cfg: Config, slug: str) -> Path:
    return Path(cfg.remote_dir) / slug / "state.json"


def read_state(path: Path, needed: str) -> dict | None:
    """The last push's record (what --attach, --resume and the checks read), checked; a damaged one is refused
    where `needed` (the flag that reads it), else ignored with a notice."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = None
    fields = {"kernel": str, "exp": str, "folds": list, "run_hash": str, "train": dict}
    if not (isinstance(state, dict) and all(isinstance(state.get(k), t) for k, t in fields.items())
            and state["kernel"].count("/") == 1 and all(isinstance(k, int) for k in state["folds"])
            and (state.get("version") is None or isinstance(state["version"], int))):
        if needed:
            raise PipelineError(f"{path}: damaged, {needed} reads it; remove it (rm {path}) and push a fresh run "
                                f"without {needed}")
        print(f"notice: {path} is damaged; ignored, a fresh run is pushed", file=sys.stderr)
        return None
    return state


def version_ref(state: dict) -> str:
    """USER/SLUG/VERSION, or USER/SLUG (its latest version) when a kill came between the push and its record."""
    return state["kernel"] if state.get("version") is None else f"{state['kernel']}/{state['version']}"


def run(cfg: Config) -> Path | None:
    if cfg.fold == "full":
        raise PipelineError("--fold full: trains here only (python -m pipeline.train --fold full); remote trains folds")
    api, user = connect(cfg.competition)
    ids = names(user, cfg.exp_name)
    path = state_path(cfg, ids["slug"])
    state = read_state(path, "--attach" if cfg.attach else "--resume" if cfg.resume else "")
    if cfg.attach:
        if state is None:
            raise PipelineError(f"--attach: {path} not found; no kernel was pushed for --exp {cfg.exp_name} from here "
                                f"(--remote-dir {cfg.remote_dir})")
        if state.get("installed"):
            print(f"{state['kernel']} version {state['version']} is installed already: {state['installed']}/")
            return Path(state["installed"])
        return finish(api, cfg, state)
    folds = cfg.fold_ids(n_splits(cfg))
    if state and not state.get("installed") and not state.get("refused"):
        status = kernel.status(api, version_ref(state), cfg.competition)
        if status not in kernel.DONE:  # a second run would spend GPU hours on the same experiment
            raise PipelineError(f"kaggle: {version_ref(state)} is still {status.lower()}; pick it up with: "
                                + command("remote", cfg, FLAGS, attach=True, resume=False, overwrite=False))
        if status == "COMPLETE" and state["train"] == build.train_values(cfg) and state["folds"] == folds:
            print(f"{version_ref(state)} finished and was never installed: installing it (no new run)")
            return finish(api, cfg, state)
    previous_overwrite = bool(cfg.resume and state and state.get("overwrite"))
    install.check_local(experiment_dir(cfg.weights_dir, cfg.exp_name), build.train_values(cfg), folds,
                        n_splits(cfg), cfg.overwrite or previous_overwrite, cfg.folds_path)
    return finish(api, cfg, push(api, cfg, ids, state, folds))


def n_splits(cfg: Config) -> int:
    return int(read_description(cfg.folds_path, cfg.data).get("n_splits") or cfg.n_splits)


def push(api, cfg: Config, ids: dict, previous: dict | None, folds: list[int]) -> dict:
    """Build and upload what changed, push a new kernel version; the state --attach and the checks read (written
    before the push too, so that a kill right after it still leaves --attach the kernel)."""
    root = Path(cfg.remote_dir)
    run_hash, shipped = build.run_dataset(root / ids["slug"] / "run", ids["run"], cfg)
    if cfg.resume and (previous is None or previous.get("run_hash") != run_hash):
        why = f"no kernel was pushed for --exp {cfg.exp_name}" if previous is None else \
            "the previous kernel ran other flags or folds"
        raise PipelineError(f"--resume: {why}; push a fresh run without --resume; nothing was uploaded")
    code_hash = upload_code(api, cfg, root, ids)
    if previous and previous.get("run_hash") == run_hash and kaggle_client.exists(api, ids["run"], cfg.competition):
        print(f"kaggle: dataset {ids['run']} holds this run already ({run_hash[:12]}), reused")
    else:
        kaggle_client.upload_dataset(api, root / ids["slug"] / "run", ids["run"], cfg.competition, f"run {run_hash[:12]}")
        kernel.wait_ready(api, ids["run"], cfg.competition, cfg.poll)
    settings = {"EXP": cfg.exp_name, "CODE": CODE_SLUG, "CODE_HASH": code_hash, "RUN": ids["run"].split("/")[1],
                "RUN_HASH": run_hash, "COMPETITION": cfg.competition, "DATA": build.kernel_data(cfg.data),
                "FILES": shipped, "PREVIOUS": ids["slug"] if cfg.resume else "", "HOURS": cfg.hours}
    sources = {"dataset_sources": [ids["code"], ids["run"]], "competition_sources": [cfg.competition],
               "kernel_sources": [ids["kernel"]] if cfg.resume else []}
    build.kernel_folder(root / ids["slug"] / "kernel", ids["kernel"], settings, sources, cfg)
    if cfg.accelerator == "P100":
        print("notice: --accelerator P100: Kaggle has retired its P100s; the kernel runs on its T4s instead")
    state = {"kernel": ids["kernel"], "version": None, "exp": cfg.exp_name, "folds": folds, "run_hash": run_hash,
             "code_hash": code_hash, "train": build.train_values(cfg),
             "overwrite": cfg.overwrite or bool(cfg.resume and previous and previous.get("overwrite")),
             "pushed": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = state_path(cfg, ids["slug"])
    write_json(state, path)
    try:
        state["version"] = kernel.push(api, root / ids["slug"] / "kernel", ids["kernel"], cfg.competition)
    except PipelineError:  # refused: nothing runs, the record goes back to what it was
        write_json(previous, path) if previous else path.unlink()
        raise
    write_json(state, path)
    print(f"kaggle: pushed kernel {ids['kernel']} version {state['version']} on {cfg.accelerator}: "
          f"https://www.kaggle.com/code/{ids['kernel']}")
    return state


def upload_code(api, cfg: Config, root: Path, ids: dict) -> str:
    """The code dataset, uploaded unless Kaggle holds these sources already (the record beside the folder says so)."""
    code_hash, built = build.code_dataset(root / "code", ids["code"])
    uploaded, record = root / "code.uploaded.json", json.dumps({"dataset": ids["code"], "hash": code_hash})
    if not built and uploaded.is_file() and uploaded.read_text() == record \
            and kaggle_client.exists(api, ids["code"], cfg.competition):
        print(f"kaggle: dataset {ids['code']} holds this code already ({code_hash[:12]}), reused")
        return code_hash
    kaggle_client.upload_dataset(api, root / "code", ids["code"], cfg.competition, f"pipeline code {code_hash[:12]}")
    kernel.wait_ready(api, ids["code"], cfg.competition, cfg.poll)
    uploaded.write_text(record)
    return code_hash


def finish(api, cfg: Config, state: dict) -> Path | None:
    """Watch the pushed version to its end, download its outputs, check and install them (or say what to do). A
    version that cannot be installed is marked so, and the next plain command pushes a fresh run."""
    ref, slug, path = version_ref(state), state["kernel"].split("/")[1], state_path(cfg, state["kernel"].split("/")[1])
    hint = {k: command("remote", cfg, FLAGS, attach=k == "attach", resume=k == "resume", overwrite=False)
            for k in ("attach", "resume", "retry")}
    status, why = kernel.watch(api, ref, cfg.competition, cfg.poll, hint["attach"])  # Ctrl-C, no network: as it was
    if status == "GONE":
        refuse(state, path, f"kaggle: {ref} not found on Kaggle (deleted?); push a fresh run with: {hint['retry']}")
    out = kernel.download(api, ref, Path(cfg.remote_dir) / slug / "output" / f"v{state.get('version') or 'latest'}",
                          cfg.competition)
    exp_src, ended = out / "weights" / state["exp"], _ending(out)
    if status == "COMPLETE" and not ended:  # a download gone wrong, most likely: not marked
        raise PipelineError(f"{out / 'remote.json'}: missing or unreadable in the outputs of the completed {ref}; "
                            f"download them again with: {hint['attach']}")
    try:
        if status != "COMPLETE" or ended != "finished":
            print(f"kaggle: the log of {ref} ends:\n{kernel.log_tail(out, slug)}", file=sys.stderr)
            kept = sorted(p.name for p in exp_src.glob("fold*.last.pth")) + [f"oof of fold {k}" for k in _done(exp_src)]
            ending = f"kaggle: {ref} {ended or status.lower()}{': ' + why if why else ''}"
            raise PipelineError(f"{ending}; its outputs keep {', '.join(kept)}: continue from them with: {hint['resume']}"
                                if kept else f"{ending}; retry with: {hint['retry']}")
        found = install.manifest(out, state["run_hash"])
        config = install.check_config(exp_src, state["train"], cfg.folds_path, {f: getattr(cfg, f) for f in build.SHIPPED})
        if missing := [k for k in state["folds"] if k not in install.finished(exp_src, config, found["files"], state["folds"])]:
            raise PipelineError(f"{exp_src}: fold(s) {', '.join(map(str, missing))} missing from the kernel's outputs "
                                f"(no model or no OOF rows); nothing installed. Retry with: {hint['retry']}")
    except PipelineError as e:
        refuse(state, path, str(e))
    write_json(state | {"installing": True}, path)  # a kill from here on: --attach installs again over its own copy
    dst = install.install(exp_src, config, list(found["files"]), state["folds"], cfg,
                          cfg.overwrite or bool(state.get("overwrite") or state.get("installing")))
    write_json({k: v for k, v in state.items() if k not in ("installing", "refused")} | {"installed": str(dst)}, path)
    print(f"installed {ref} ({found.get('seconds', 0):,.0f} s on Kaggle) -> {dst}/")
    if (dst / "cv.json").is_file():
        print(format_cv(CVSummary.read(dst / "cv.json"), state["exp"]))
    print(f"next: {command('infer', cfg, ['data', 'weights_dir', 'cache_dir', 'exp', 'tta'], exp=(state['exp'],), tta=True)}")
    return dst


def refuse(state: dict, path: Path, why: str) -> None:
    """This version will not be installed: said, and recorded, so that the next plain command pushes a fresh run."""
    write_json(state | {"refused": why[:300]}, path)
    raise PipelineError(why)


def _ending(out: Path) -> str:
    """How the kernel's script says the training ended (remote.json's status), '' when it did not get there."""
    try:
        return str(json.loads((out / "remote.json").read_text())["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _done(exp_src: Path) -> list[int]:
    from pipeline.experiment import done_folds

    try:
        return done_folds(exp_src) if exp_src.is_dir() else []
    except PipelineError:
        return []


def main(argv=None) -> int:
    return main_guard(lambda a: run(parse_stage(a, "remote", FLAGS, __doc__, short={"fold": "--folds"})[0]), argv)
