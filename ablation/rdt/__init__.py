"""RDT (thu-ml/RoboticsDiffusionTransformer) re-implemented to load official checkpoints strictly.

`model` holds the network, `checkpoint` the strict loader/saver, `lang` the T5 instruction
embeddings, `vision` the SigLIP image preprocessing and `features` the SigLIP features of demo
frames (cached for training) and of live camera frames (rollouts).
"""
from .checkpoint import RDTCheckpointError, load_rdt_checkpoint, save_rdt_checkpoint
from .model import RDT_PRESETS, RDTConfig, RDTLossOutput, RDTRunner, build_rdt, from_official_config_json

__all__ = [
    "RDT_PRESETS", "RDTCheckpointError", "RDTConfig", "RDTLossOutput", "RDTRunner", "build_rdt",
    "from_official_config_json", "load_rdt_checkpoint", "save_rdt_checkpoint",
]
