"""Every valid codec combination, and a fixed physical input for golden outputs."""
import itertools

import numpy as np

from ablation.codec import ActionCodec
from ablation.representations import representation
from ablation.data import episode_view, physical_actions
from ablation.spec import CodecSpec

REPS = [("native", "axis_angle"), ("metric_delta", "axis_angle"), ("metric_delta", "rot6d"),
        ("abs_pose", "rot6d"), ("seed_mix", "rot6d")]
LAYOUTS = ["compact", "rdt_eef", "rdt_velocity"]
NORMS = ["identity", "scale", "minmax", "meanstd", "quantile"]


def combos():
    out = []
    for (rep, rot), layout, norm in itertools.product(REPS, LAYOUTS, NORMS):
        if layout == "rdt_velocity" and rot == "rot6d":
            continue
        scales = {"pos": 100.0, "rot": 2.0, "grip": 0.5} if norm != "identity" else {}
        out.append(CodecSpec(representation=rep, rotation=rot, layout=layout, normalizer=norm,
                             unit_scales=scales))
    return out


def combo_id(c: CodecSpec) -> str:
    return f"{c.representation}-{c.rotation}-{c.layout}-{c.normalizer}"


def fixed_views():
    """Deterministic synthetic episodes (seed magnitudes), aligned views."""
    from tests.conftest import synthetic_episode

    rng = np.random.default_rng(1234)
    return [episode_view(synthetic_episode(rng, T=25), "before") for _ in range(3)]


def fit_fixed(spec: CodecSpec, views=None):
    views = views or fixed_views()
    rep = representation(spec.representation, spec.rotation)
    phys = np.concatenate([physical_actions(v, rep) for v in views])
    states = np.concatenate([v.state for v in views])
    native = np.concatenate([v.actions for v in views])
    return ActionCodec.fit(spec, phys, states, native), phys, states
