"""model.kind rdt with camera images: the SigLIP feature cache, training, reload, rollouts.

No SigLIP so400m or T5-XXL weights exist here (nothing may download them): a tiny randomly
initialised SigLIP (1 layer, 28 px, 14 px patches -> 4 patches x 24 dims, the fixture RDT's image
geometry) and a tiny T5 with a word-level tokenizer are saved locally and loaded through the same
code as the real ones. The demos are synthetic trajectories (tests/conftest.py) with random camera
frames; the rollouts run the real LIBERO simulator with cameras on.
"""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from ablation.data import DemoMeta, read_demo_file, write_demo_file
from ablation.errors import UserError
from ablation.spec import EXPERIMENTS_DIR, SpecError, resolve_spec
from ablation.spec_data import prepare_spec_data

from .conftest import RDT_CKPT, synthetic_episode, synthetic_meta

CKPT = RDT_CKPT
INSTRUCTION = "pick up the thing"  # synthetic_meta()'s language_instruction
# Live and cached features go through the same fp32 SigLIP and the same float16 rounding; only the
# batch composition differs (another matmul blocking), which may move a value by one float16 step
# (2e-3 at |x| < 4). Measured on this CPU: bitwise equal over 60 windows.
FEATURE_ATOL, FEATURE_RTOL = 2e-3, 2e-3


def _tiny_siglip(path: Path, seed: int) -> Path:
    from ablation.rdt.vision import _import_siglip

    SiglipVisionModel = _import_siglip()
    from transformers import SiglipVisionConfig

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                             image_size=28, patch_size=14)
    SiglipVisionModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    return _tiny_siglip(tmp_path_factory.mktemp("siglip"), seed=0)


def _image_episode(rng: np.random.Generator, T: int, size: int = 32):
    ep = synthetic_episode(rng, T=T)
    # Frames that change over time, so that every step's features differ.
    base = rng.integers(0, 256, (2, size, size, 3))
    drift = np.arange(T)[:, None, None, None] * 3
    ep.obs["agentview_rgb"] = ((base[0] + drift) % 256).astype(np.uint8)
    ep.obs["eye_in_hand_rgb"] = ((base[1] + 2 * drift) % 256).astype(np.uint8)
    return ep


@pytest.fixture(scope="module")
def image_demo_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    eps = [_image_episode(rng, int(rng.integers(24, 32))) for _ in range(5)]
    path = tmp_path_factory.mktemp("img_demos") / "synthetic_images.hdf5"
    write_demo_file(path, eps, synthetic_meta())
    return path


@pytest.fixture(scope="module")
def lang_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lang") / "task.pt"
    emb = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(0))
    torch.save({"name": "task", "instruction": INSTRUCTION, "embeddings": emb}, path)
    return path


def _spec(siglip: Path | None, lang: Path | None, *extra: str):
    sets = ["model.kind=rdt", "model.size=rdt-tiny-fixture", "data.action_chunk=64", "data.images=true",
            f"model.pretrained={CKPT}", "data.obs_history=1", "train.steps=4", "train.batch_size=4",
            "train.eval_every=4", "train.log_every=2", "train.checkpoint_every=100", "rollout.gate_episodes=0"]
    if siglip is not None:
        sets.append(f"model.vision_model={siglip}")
    if lang is not None:
        sets.append(f"model.lang_embeddings={lang}")
    return resolve_spec(EXPERIMENTS_DIR / "baseline_rdt.yaml", sets + list(extra))


# ----------------------------------------------------------------------------- the cache

def test_cache_is_built_once_and_gives_rdt_ordered_tokens(siglip_dir, image_demo_file, lang_file, tmp_path):
    from ablation.rdt.features import siglip_encoder

    spec = _spec(siglip_dir, lang_file)
    data = prepare_spec_data(spec, image_demo_file, features_dir=tmp_path)
    cache = data.train.images.cache
    assert cache.built and len(list(tmp_path.glob("*.npy"))) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    again = prepare_spec_data(spec, image_demo_file, features_dir=tmp_path)
    assert not again.train.images.cache.built and again.train.images.cache.key == cache.key

    w = data.train
    tok = w.images[np.arange(len(w))]                       # (N, 2 frames x 3 cams x 4 patches, 24)
    assert tok.shape == (len(w), 24, 24) and tok.dtype == np.float32
    per_image = tok.reshape(len(w), 6, 4, 24)
    bg = cache.array[cache.background_row].astype(np.float32)
    # left_wrist (slots 2 and 5) is always background; at t = 0 the previous frame is background too
    np.testing.assert_array_equal(per_image[:, 2], np.broadcast_to(bg, per_image[:, 2].shape))
    np.testing.assert_array_equal(per_image[:, 5], np.broadcast_to(bg, per_image[:, 5].shape))
    first = np.nonzero(w.step == 0)[0]
    assert len(first) and np.all(per_image[first, 0] == bg) and np.all(per_image[first, 1] == bg)
    # the current frame's ext slot is SigLIP of the stored agentview frame, flipped upright
    i = int(np.nonzero(w.step == 5)[0][0])
    ds = read_demo_file(image_demo_file, load_images=True)
    ep = ds.episodes[int(w.demo_index[i])]
    enc = siglip_encoder(siglip_dir)
    want = enc.encode([ep.obs["agentview_rgb"][5], ep.obs["eye_in_hand_rgb"][4]], cache.settings).astype(np.float32)
    np.testing.assert_allclose(per_image[i, 3], want[0], atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
    np.testing.assert_allclose(per_image[i, 1], want[1], atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
    assert not np.allclose(per_image[i, 3], per_image[i, 0])  # frames 4 and 5 differ


def test_cache_is_rebuilt_when_demos_or_siglip_weights_change(siglip_dir, image_demo_file, lang_file, tmp_path):
    feats = tmp_path / "features"
    spec = _spec(siglip_dir, lang_file)
    base = prepare_spec_data(spec, image_demo_file, features_dir=feats).train.images.cache

    # Same path, other bytes: one frame of one demo is changed.
    demo2 = tmp_path / "demos.hdf5"
    ds = read_demo_file(image_demo_file, load_images=True)
    ds.episodes[0].obs["agentview_rgb"][3] = 255 - ds.episodes[0].obs["agentview_rgb"][3]
    write_demo_file(demo2, ds.episodes, DemoMeta(**{**ds.meta.__dict__}))
    c2 = prepare_spec_data(spec, demo2, features_dir=feats).train.images.cache
    assert c2.built and c2.key != base.key
    row = (c2.demo_start["demo_0"] + 3) * 2  # agentview of frame 3
    assert not np.allclose(c2.array[row], base.array[row])
    np.testing.assert_array_equal(c2.array[row + 2], base.array[row + 2])  # frame 4: unchanged

    # Same directory, other weights: the key changes and everything is encoded again.
    siglip2 = tmp_path / "siglip"
    shutil.copytree(siglip_dir, siglip2)
    spec2 = _spec(siglip2, lang_file)
    c3 = prepare_spec_data(spec2, image_demo_file, features_dir=feats).train.images.cache
    assert not c3.built and c3.key == base.key  # a byte-identical copy is the same SigLIP
    _tiny_siglip(siglip2, seed=1)
    c4 = prepare_spec_data(spec2, image_demo_file, features_dir=feats).train.images.cache
    assert c4.built and c4.key != base.key and not np.allclose(c4.array[0], base.array[0])

    # A damaged entry under the right key is rebuilt, not read.
    npy = feats / f"{base.key}.npy"
    arr = np.load(npy)  # a copy: np.save below rewrites the file that base.array maps
    np.save(npy, arr[:-1])
    c5 = prepare_spec_data(spec, image_demo_file, features_dir=feats).train.images.cache
    assert c5.built and c5.key == base.key
    np.testing.assert_array_equal(np.asarray(c5.array), arr)


def test_training_and_rollout_features_agree(siglip_dir, image_demo_file, lang_file, tmp_path):
    """The tokens a training window reads from the cache equal the tokens the rollout path computes
    from the same frames, arriving as the simulator gives them (as rendered, with the step index
    `t`, the window padded at the start by repeating its first obs), batched over episodes."""
    from ablation.policy import ObsNormalizer, build_policy
    from ablation.rdt.features import live_image_tokens

    spec = _spec(siglip_dir, lang_file)
    data = prepare_spec_data(spec, image_demo_file, features_dir=tmp_path)
    w = data.train
    pol = build_policy(spec, data.codec, ObsNormalizer.fit(w.obs, spec.data.obs_keys), w.obs.shape[-1],
                       instruction=INSTRUCTION)
    assert pol.obs_history == 2  # RDT's image history, although data.obs_history is 1
    ds = read_demo_file(image_demo_file, load_images=True)
    picks = [int(np.nonzero(w.step == s)[0][0]) for s in (0, 1, 7)]
    windows = []
    for i in picks:
        ep, t = ds.episodes[int(w.demo_index[i])], int(w.step[i])
        obs = [{"agentview_rgb": ep.obs["agentview_rgb"][s], "eye_in_hand_rgb": ep.obs["eye_in_hand_rgb"][s],
                "t": np.array([s], dtype=np.float64)} for s in range(max(0, t - 1), t + 1)]
        windows.append([obs[0]] * (pol.obs_history - len(obs)) + obs)
    live = live_image_tokens(pol, windows).numpy()              # one SigLIP call for the 3 episodes
    cached = w.images[np.asarray(picks)]
    np.testing.assert_allclose(live, cached, atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
    one = live_image_tokens(pol, windows[2:]).numpy()           # alone vs in a batch
    np.testing.assert_allclose(one[0], live[2], atol=FEATURE_ATOL, rtol=FEATURE_RTOL)


# ----------------------------------------------------------------------------- errors

def test_missing_siglip_and_t5_files_are_named_with_the_fix(siglip_dir, image_demo_file, lang_file, tmp_path):
    from ablation.rdt.lang import LangEmbeddingError
    from ablation.rdt.vision import VisionInputError

    with pytest.raises(SpecError, match="model.vision_model"):
        _spec(None, lang_file)
    missing = tmp_path / "no_siglip"
    with pytest.raises(VisionInputError, match=f"{missing}.*does not exist.*siglip-so400m-patch14-384"):
        prepare_spec_data(_spec(missing, lang_file), image_demo_file, features_dir=tmp_path)
    no_weights = tmp_path / "siglip_config_only"
    no_weights.mkdir()
    shutil.copy(siglip_dir / "config.json", no_weights / "config.json")
    with pytest.raises(VisionInputError, match=f"no SigLIP weights in {no_weights}.*model.safetensors"):
        prepare_spec_data(_spec(no_weights, lang_file), image_demo_file, features_dir=tmp_path)
    # demos without camera frames
    plain = tmp_path / "no_cameras.hdf5"
    write_demo_file(plain, [synthetic_episode(np.random.default_rng(1), T=30) for _ in range(3)], synthetic_meta())
    with pytest.raises(UserError, match=f"{plain}.*no obs/agentview_rgb.*data.images: true"):
        prepare_spec_data(_spec(siglip_dir, lang_file), plain, features_dir=tmp_path)
    # T5 embeddings: a missing file, and a file without this task's instruction
    from ablation.policy import ObsNormalizer, build_policy

    data = prepare_spec_data(_spec(siglip_dir, lang_file), image_demo_file, features_dir=tmp_path)
    norm = ObsNormalizer.fit(data.train.obs, _spec(siglip_dir, lang_file).data.obs_keys)
    gone = tmp_path / "missing_lang.pt"
    with pytest.raises(LangEmbeddingError, match=f"{gone} does not exist.*encode_lang.py"):
        build_policy(_spec(siglip_dir, gone), data.codec, norm, data.train.obs.shape[-1], instruction=INSTRUCTION)
    with pytest.raises(LangEmbeddingError, match="no embedding for instruction 'open the drawer'"):
        build_policy(_spec(siglip_dir, lang_file), data.codec, norm, data.train.obs.shape[-1],
                     instruction="open the drawer")


def _tiny_t5(path: Path) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "pick", "up", "the", "thing"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            eos_token="</s>").save_pretrained(path)
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                            feed_forward_proj="gated-gelu")).save_pretrained(path)
    return path


def test_language_from_a_local_t5_directory(tmp_path):
    from transformers import AutoTokenizer, T5EncoderModel

    from ablation.rdt.adapter import RDTNetConfig, build_rdt_net
    from ablation.rdt.lang import LangEmbeddingError, instruction_embedding

    t5 = _tiny_t5(tmp_path / "t5")
    emb = instruction_embedding(t5, INSTRUCTION)
    assert emb.shape == (4, 32)  # one token per word of the instruction
    ids = AutoTokenizer.from_pretrained(str(t5))(INSTRUCTION, return_tensors="pt")
    ref = T5EncoderModel.from_pretrained(str(t5), dtype=torch.bfloat16)(**ids).last_hidden_state[0]
    torch.testing.assert_close(emb, ref.detach(), atol=1e-2, rtol=2e-2)  # bf16, as RDT's encode_lang.py
    net = build_rdt_net(RDTNetConfig("rdt-tiny-fixture", obs_dim=5), str(t5), INSTRUCTION)
    torch.testing.assert_close(net.lang_tokens, emb.float())
    (t5 / "tokenizer.json").unlink()
    with pytest.raises(LangEmbeddingError, match=f"cannot load the T5 tokenizer from {t5}"):
        instruction_embedding(t5, INSTRUCTION)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.sim
@pytest.mark.slow
def test_image_path_end_to_end(siglip_dir, image_demo_file, lang_file, tmp_path, monkeypatch):
    """Cache -> a few training steps -> bundle -> reload -> 2 closed-loop episodes in the simulator
    with cameras on, batched in one process (one SigLIP and one RDT call per step for both)."""
    from ablation.bundle import load_policy
    from ablation.bundle_policy import load_rollout_policy
    from ablation.rollout_pool import run_rollouts
    from ablation.train import WindowTensors, train

    monkeypatch.setenv("ABLATION_FEATURES_DIR", str(tmp_path / "features"))
    # Cameras replace the privileged object poses (whose width differs between synthetic demos and the sim).
    spec = _spec(siglip_dir, lang_file, "data.image_size=64", "rollout.max_steps=6", "rollout.wait_steps=2",
                 "data.obs_keys=[ee_pos, ee_rot6d, gripper_states, gripper_history]")
    res = train(spec, image_demo_file, tmp_path / "run", progress=False)
    assert res.steps == 4 and np.isfinite(res.final["train/loss/total"])
    assert len(list((tmp_path / "features").glob("*.npy"))) == 1

    policy = load_policy(res.checkpoint_dir)
    assert policy.cfg.images and policy.cfg.vision_sha256
    data = prepare_spec_data(spec, image_demo_file)  # the cache from training
    assert not data.train.images.cache.built
    batch = WindowTensors(data.train, torch.device("cpu")).batch(torch.arange(3))
    noise = torch.randn(3, 64, 128, generator=torch.Generator().manual_seed(0))
    again = load_policy(res.checkpoint_dir)
    out = policy.sample(batch, noise=noise)
    torch.testing.assert_close(out, again.sample(batch, noise=noise), rtol=0, atol=0)
    # the image tokens reach the network: other tokens, other actions
    blank = dict(batch, images=torch.zeros_like(batch["images"]))
    assert not torch.allclose(out, policy.sample(blank, noise=noise))

    result = run_rollouts(partial(load_rollout_policy, str(res.checkpoint_dir)), spec.data.suite, spec.data.task,
                          episodes=2, replan_every=spec.rollout.replan_every, max_steps=6, images=True,
                          image_size=64, wait_steps=2, batch=2)
    assert [e.error for e in result.episodes] == [None, None]
    assert all(e.steps == 6 and e.policy_calls == 1 for e in result.episodes)
