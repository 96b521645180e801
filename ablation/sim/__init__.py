"""LIBERO simulator layer: offline setup, env factory, scripted expert, demo generation.

`ablation.sim.libero_setup.ensure_libero()` (called by `make_env`) must run before anything imports
libero, robosuite or mujoco: it writes LIBERO's config and selects the render backend.
Names are imported lazily so `python -m ablation.sim.libero_setup` runs cleanly.
"""
_EXPORTS = {
    "ensure_libero": "libero_setup", "list_tasks": "libero_setup", "SUITE_MAX_STEPS": "libero_setup",
    "LiberoSetupError": "libero_setup", "MissingAssetsError": "libero_setup",
    "RenderBackendError": "libero_setup", "UnknownTaskError": "libero_setup",
    "make_env": "env", "LiberoEnv": "env",
    "ScriptedExpert": "expert", "generate_demos": "demos",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
