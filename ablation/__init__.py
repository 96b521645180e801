"""Ablation harness: which action representation makes an RDT-style policy work on LIBERO?"""
__version__ = "0.1.0"
