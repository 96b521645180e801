"""The pretraining stage: give the network's action slots a meaning before the slot-semantics test.

A randomly initialised network gives slot positions no meaning, so "deltas in 30-38 clash with what
pretraining put there" can only be tested after pretraining. This stage trains one DiT on the other
tasks of the suite with ABSOLUTE EEF poses in slots 30-38 (RDT's pretraining meaning), caches it
under `<workdir>/pretrain/<key>/`, and every arm whose spec says `train.init_from: "@pretrain"` starts
from it (all arms and seeds share the one cached network).

Observations that differ between tasks (object_state: each task has its own objects) are left out
of pretraining unless the pretraining spec observes them (then every task must give them the same
width); the fine-tuned network re-learns the layers whose shapes differ (see
`ablation.bundle.load_matching`), everything else (the action and state adaptors, the transformer,
the action head) starts pretrained.

A plan may pretrain several specs (`pretrain.specs`, named by the arms as "@pretrain:NAME") and each
several times (`pretrain.seeds`: independent runs; fine-tuning seed s starts from run seeds[s % n]).
Each spec x seed is its own cached network; the merged demo file is shared when their data agree.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .train import train

PRETRAIN_MARKER = "@pretrain"


def marker_spec(init_from: str | None, default: str | None) -> str | None:
    """The pretraining spec an arm's `train.init_from` names: "@pretrain" -> the plan's single `spec`
    (`default`), "@pretrain:NAME" -> NAME; None for anything else (a path, or no pretraining)."""
    if not init_from or not init_from.startswith(PRETRAIN_MARKER):
        return None
    rest = init_from[len(PRETRAIN_MARKER):]
    if rest == "":
        return default
    return rest[1:] if rest.startswith(":") and len(rest) > 1 else None


def pretrain_run_seed(seed: int, seeds: tuple[int, ...]) -> int | None:
    """The pretraining run (its seed) that the fine-tuning run with `seed` starts from: seeds[seed % n];
    None when the plan runs one pretraining at its spec's own seed."""
    return seeds[seed % len(seeds)] if seeds else None


@dataclass(frozen=True)
class PretrainResult:
    bundle: Path
    key: str
    demo_file: Path
    tasks: tuple[int, ...]
    reused: bool
    seconds: float


def _merged_demos(spec, tasks: tuple[int, ...], n_demos: int, workdir: Path) -> Path:
    """One demo file holding n_demos expert demos of each task. object_state is task-specific (each task
    has its own objects), so it is dropped unless the pretraining spec observes it (data.obs_keys): then
    the tasks must give it the same width (libero_object: 98 in every task), so that the fine-tuned
    network's observation layers keep their shapes and transfer."""
    from .data import DemoMeta, read_demo_file, write_demo_file
    from .provenance import file_sha256
    from .spec import with_overrides
    from .workdir import ensure_demos

    files = [ensure_demos(with_overrides(spec, [f"data.task={t}", f"data.n_demos={n_demos}"]), workdir, 0)
             for t in tasks]
    keep_objects = "object_state" in spec.data.obs_keys
    key = hashlib.sha256("|".join(file_sha256(f) for f in files).encode()).hexdigest()[:12]
    out = workdir / "pretrain" / (f"demos-{spec.data.suite}-{'_'.join(map(str, tasks))}-{key}"
                                  + ("-objects" if keep_objects else "") + ".hdf5")
    if out.is_file():
        return out
    episodes, widths = [], {}
    for t, f in zip(tasks, files):
        for ep in read_demo_file(f).episodes:
            if keep_objects and "object_state" in ep.obs:
                widths[t] = int(np.prod(ep.obs["object_state"].shape[1:]))
            else:
                ep.obs.pop("object_state", None)
            episodes.append(ep)
    if keep_objects and len(set(widths.values())) > 1:
        raise UserError(f"{spec.name}: data.obs_keys has object_state, but tasks {list(tasks)} of {spec.data.suite} give it "
                        f"different widths ({widths}); pretrain on tasks whose scenes hold as many objects, or drop "
                        "object_state from the pretraining spec's data.obs_keys")
    meta = DemoMeta(env_name="pretraining mix", problem_info={"language_instruction": "pretraining mix"},
                    bddl_file_name="", bddl_file_content="", env_args={}, obs_convention="before",
                    attrs={"source": "pretraining mix", "suite": spec.data.suite, "tasks": list(tasks),
                           "files": [str(f) for f in files], "starts": "random_resets"})
    write_demo_file(out, episodes, meta)
    return out


def pretrain(spec, tasks: tuple[int, ...], n_demos: int, workdir: Path, *, progress: bool = True,
             on_metrics=None) -> PretrainResult:
    """Train (or reuse) the cached pretraining network. Returns its final bundle."""
    t0 = time.time()
    if spec.data.task in tasks:
        raise UserError(f"pretrain.tasks {list(tasks)} include the target task {spec.data.task}: pretraining must "
                        "use other tasks of the suite, or fine-tuning would not test what pretraining taught")
    demo = _merged_demos(spec, tasks, n_demos, workdir)
    keys = [hashlib.sha256(json.dumps({"spec": h, "demo": demo.name}, sort_keys=True).encode()).hexdigest()[:12]
            for h in (spec.hash(), spec.legacy_hash())]  # legacy: the cache of an older workdir
    key = next((k for k in keys if (workdir / "pretrain" / f"{spec.name}-{k}" / "DONE").is_file()), keys[0])
    out = workdir / "pretrain" / f"{spec.name}-{key}"
    done = out / "DONE"
    if done.is_file():
        return PretrainResult(Path(done.read_text().strip()), key, demo, tasks, True, time.time() - t0)
    res = train(spec, demo, out, on_metrics=on_metrics, resume=True, progress=progress)
    bundle = Path(res.checkpoint_dir)
    done.write_text(str(bundle))
    return PretrainResult(bundle, key, demo, tasks, False, time.time() - t0)
