"""T5-v1_1-XXL instruction embeddings: precomputed in RDT's `scripts/encode_lang.py` format, or
encoded here from a local T5 directory.

That script saves one torch file per instruction:
    {"name": str, "instruction": str, "embeddings": Tensor (1, L, 4096)}   (bf16 or fp32)
RDT's batch encoder saves a bare (L, 4096) tensor instead; both load here. `model.lang_embeddings`
may instead name a local Hugging Face T5 directory (config.json, weights, tokenizer files): the
instruction is then encoded once, as encode_lang.py does (T5EncoderModel in bf16, the tokenizer's
own tokens, last_hidden_state). Nothing here downloads T5.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError

T5_DIM = 4096
SPEC_FIELD = "model.lang_embeddings"
HOW_TO_PRODUCE = (
    "produce it on a machine that has T5-v1_1-XXL by running RDT's scripts/encode_lang.py "
    "(thu-ml/RoboticsDiffusionTransformer; set INSTRUCTION, TASK_NAME and SAVE_DIR in it), "
    f"copy the .pt file (or a folder of them) here and set `{SPEC_FIELD}: PATH` in the spec; "
    "nothing here downloads T5")


T5_HOW_TO = ("copy google/t5-v1_1-xxl (config.json, model weights, spiece.model / tokenizer files) to a local "
             f"directory and set `{SPEC_FIELD}: DIR`, or give precomputed embeddings instead")


class LangEmbeddingError(UserError):
    """Missing or malformed language-embedding file; the message says how to produce one."""


@dataclass(frozen=True)
class LangEmbedding:
    """One instruction's T5 token embeddings, `embeddings` (L, D), L >= 0."""

    name: str
    instruction: str
    embeddings: torch.Tensor
    source: Optional[Path] = None


def load_lang_embedding(path: str | Path) -> LangEmbedding:
    """Read one encode_lang.py file (or a bare (L, D) / (1, L, D) tensor file)."""
    path = Path(path)
    if not path.is_file():
        raise LangEmbeddingError(f"language embedding file {path} does not exist; {HOW_TO_PRODUCE}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LangEmbeddingError(f"cannot read language embeddings {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, torch.Tensor):
        name, instruction, emb = path.stem, "", obj
    elif isinstance(obj, Mapping) and isinstance(obj.get("embeddings"), torch.Tensor):
        name = str(obj.get("name", path.stem))
        instruction = str(obj.get("instruction", ""))
        emb = obj["embeddings"]
    else:
        raise LangEmbeddingError(f"{path}: expected encode_lang.py's dict {{'name','instruction','embeddings'}} "
                                 f"or a tensor, got {type(obj).__name__}")
    if emb.dim() == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.dim() != 2:
        raise LangEmbeddingError(f"{path}: embeddings must be (1, L, D) or (L, D), got {tuple(emb.shape)}")
    return LangEmbedding(name=name, instruction=instruction, embeddings=emb, source=path)


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split())


class LangEmbeddingStore:
    """All embeddings under `model.lang_embeddings` (one .pt file or a folder of them), looked up
    by instruction text (case/whitespace-insensitive) or by file name/`name`."""

    def __init__(self, embeddings: Sequence[LangEmbedding], source: Path) -> None:
        self.source = source
        self._by_key: dict[str, LangEmbedding] = {}
        for e in embeddings:
            for key in (_normalise(e.instruction), _normalise(e.name)):
                if key:
                    self._by_key.setdefault(key, e)

    @classmethod
    def from_path(cls, path: str | Path | None) -> "LangEmbeddingStore":
        if path is None:
            raise LangEmbeddingError(f"`{SPEC_FIELD}` is not set, but model.kind rdt needs T5 instruction "
                                     f"embeddings; {HOW_TO_PRODUCE}")
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.pt"))
            if not files:
                raise LangEmbeddingError(f"{SPEC_FIELD} folder {path} holds no .pt files; {HOW_TO_PRODUCE}")
            return cls([load_lang_embedding(f) for f in files], path)
        return cls([load_lang_embedding(path)], path)

    def __len__(self) -> int:
        return len({id(e) for e in self._by_key.values()})

    def get(self, instruction: str) -> LangEmbedding:
        try:
            return self._by_key[_normalise(instruction)]
        except KeyError:
            known = sorted({e.instruction or e.name for e in self._by_key.values()})
            raise LangEmbeddingError(f"no embedding for instruction {instruction!r} in {self.source} "
                                     f"(has: {known[:5]}{' ...' if len(known) > 5 else ''}); {HOW_TO_PRODUCE}") from None


def pad_lang_embeddings(
    embeddings: Sequence[torch.Tensor],
    max_len: int = 1024,
    dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch (L_i, D) tensors -> tokens (B, Lb, D) zero-padded, mask (B, Lb) bool (True = real token).

    Lb = max(1, max L_i). An empty instruction (L = 0) becomes one zero token with mask False; the
    model's cross-attention treats a row with no valid token as "no language" (no NaN).
    """
    if not embeddings:
        raise ValueError("pad_lang_embeddings needs at least one embedding")
    dims = {e.shape[-1] for e in embeddings}
    if len(dims) != 1:
        raise ValueError(f"language embeddings have different widths {sorted(dims)}")
    for i, e in enumerate(embeddings):
        if e.dim() != 2:
            raise ValueError(f"embedding {i} must be (L, D), got {tuple(e.shape)}")
        if e.shape[0] > max_len:
            raise ValueError(f"embedding {i} has {e.shape[0]} tokens, more than max_lang_cond_len {max_len}")
    width = dims.pop()
    length = max(1, max(e.shape[0] for e in embeddings))
    dtype = dtype or embeddings[0].dtype
    tokens = torch.zeros(len(embeddings), length, width, dtype=dtype)  # (B, Lb, D)
    mask = torch.zeros(len(embeddings), length, dtype=torch.bool)  # (B, Lb)
    for i, e in enumerate(embeddings):
        tokens[i, :e.shape[0]] = e.to(dtype)
        mask[i, :e.shape[0]] = True
    return tokens, mask


def is_t5_directory(path: str | Path) -> bool:
    """A directory holding a Hugging Face model (config.json), as opposed to a folder of .pt files."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def encode_with_t5(path: str | Path, instruction: str, max_len: int = 1024,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """One instruction -> (L, D) with a local T5 directory, as RDT's encode_lang.py computes it."""
    path = Path(path)
    try:
        from transformers import AutoTokenizer, T5EncoderModel
    except ImportError:
        raise LangEmbeddingError(f"{SPEC_FIELD} {path} is a T5 directory, and encoding with it needs the "
                                 "`transformers` package (and `sentencepiece` for T5's tokenizer), which is not "
                                 "installed: pip install transformers sentencepiece; or give precomputed "
                                 "embeddings (RDT's scripts/encode_lang.py)") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - missing files and missing sentencepiece look alike here
        raise LangEmbeddingError(f"{SPEC_FIELD}: cannot load the T5 tokenizer from {path} ({type(exc).__name__}: "
                                 f"{exc}); it needs spiece.model or tokenizer.json there (and `pip install "
                                 f"sentencepiece` for spiece.model); {T5_HOW_TO}") from None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = T5EncoderModel.from_pretrained(str(path), local_files_only=True, dtype=torch.bfloat16)
    except Exception as exc:  # noqa: BLE001 - e.g. no weights file
        raise LangEmbeddingError(f"{SPEC_FIELD}: cannot load T5 encoder weights from {path} ({type(exc).__name__}: "
                                 f"{exc}); {T5_HOW_TO}") from None
    model.to(device).eval().requires_grad_(False)
    tokens = tokenizer(instruction, return_tensors="pt", truncation=True, max_length=max_len)
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"].to(device),
                    attention_mask=tokens["attention_mask"].to(device)).last_hidden_state  # (1, L, D)
    return out[0].cpu()


def instruction_embedding(path: str | Path, instruction: str, max_len: int = 1024) -> torch.Tensor:
    """The task instruction's (L, D) T5 tokens from `model.lang_embeddings`: a precomputed file or
    folder (looked up by instruction), or a local T5 directory (encoded here)."""
    if path is not None and is_t5_directory(path):
        return encode_with_t5(path, instruction, max_len)
    return LangEmbeddingStore.from_path(path).get(instruction).embeddings
