"""RDT re-implementation against the golden fixture made by the original code (tests/fixtures/rdt_tiny).

The fixture is data only: a tiny official-layout checkpoint, fixed inputs and the official outputs.
Everything here runs on CPU in float32 unless a test says otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ablation.rdt import (
    RDTCheckpointError, RDTConfig, RDTRunner, from_official_config_json, load_rdt_checkpoint, save_rdt_checkpoint,
)
from ablation.rdt.lang import LangEmbeddingError, LangEmbeddingStore, load_lang_embedding, pad_lang_embeddings
from tests.conftest import RDT_FIXTURE


FIXTURE = RDT_FIXTURE


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "inputs.safetensors"))


@pytest.fixture(scope="module")
def outputs() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "outputs.safetensors"))


@pytest.fixture(scope="module")
def loaded() -> tuple[RDTRunner, RDTConfig]:
    return load_rdt_checkpoint(FIXTURE / "checkpoint", dtype=torch.float32)


@pytest.fixture
def model(loaded) -> RDTRunner:
    return loaded[0]


def _cond(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: inputs[k] for k in ("lang_tokens", "lang_attn_mask", "img_tokens", "state_tokens", "action_mask",
                                   "ctrl_freqs")}


def _raw_forward(model: RDTRunner, inputs: dict[str, torch.Tensor], **override: torch.Tensor) -> torch.Tensor:
    x = {**inputs, **override}
    with torch.no_grad():
        return model.denoise(x["raw_noisy_action"], x["raw_timesteps"], x["lang_tokens"], x["lang_attn_mask"],
                             x["img_tokens"], x["state_tokens"], x["action_mask"], x["ctrl_freqs"])


def _read_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (FIXTURE / name).read_text().splitlines():
        key, shape = line.split(" ", 1)
        rows.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return rows


# ---- architecture ---------------------------------------------------------------------------

@pytest.mark.parametrize("preset, keys_file, n_params", [
    ("rdt-tiny-fixture", "keys.txt", 180_608),
    ("rdt-170m", "keys_rdt170m.txt", 166_229_888),
    ("rdt-1b", "keys_rdt1b.txt", 1_228_319_872),
])
def test_state_dict_keys_shapes_and_order_match_official(preset: str, keys_file: str, n_params: int) -> None:
    with torch.device("meta"):
        model = RDTRunner(RDTConfig.preset(preset))
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _read_keys(keys_file)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert list(model.buffers()) == []
    assert [name for name, _ in model.named_children()] == ["model", "lang_adaptor", "img_adaptor", "state_adaptor"]


def test_config_json_round_trip_matches_fixture() -> None:
    raw = json.loads((FIXTURE / "checkpoint" / "config.json").read_text())
    cfg = from_official_config_json(raw)
    assert cfg == RDTConfig.preset("rdt-tiny-fixture")
    assert cfg.to_official_config_json() == raw


def test_released_presets_match_hub_config_values() -> None:
    for name, depth, hidden in (("rdt-170m", 14, 1024), ("rdt-1b", 28, 2048)):
        cfg = RDTConfig.preset(name)
        assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == (depth, hidden, 32)
        assert (cfg.lang_token_dim, cfg.img_token_dim, cfg.max_lang_cond_len, cfg.img_cond_len) == (4096, 1152, 1024, 4374)
        assert cfg.img_pos_embed_config == (("image", (2, 3, -729)),)
        assert cfg.lang_pos_embed_config == (("lang", -1024),)


def test_fresh_init_is_finite_and_zero_output() -> None:
    model = RDTRunner(RDTConfig.preset("rdt-tiny-fixture"))
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    # The official init zeroes the last projection, so an untrained model predicts 0.
    assert model.model.final_layer.ffn_final.fc2.weight.abs().sum() == 0
    assert model.model.x_pos_embed.abs().sum() > 0


# ---- golden outputs ------------------------------------------------------------------------

def test_fixture_checkpoint_loads_strictly(loaded) -> None:
    model, cfg = loaded
    assert cfg == RDTConfig.preset("rdt-tiny-fixture")
    official = torch.load(FIXTURE / "checkpoint" / "pytorch_model.bin", weights_only=True)
    ours = model.state_dict()
    assert list(ours) == list(official)
    for k, v in official.items():
        assert torch.equal(ours[k], v), k
    assert not model.training


def test_raw_forward_reproduces_official(model, inputs, outputs) -> None:
    x = inputs
    traj = torch.cat([x["state_tokens"], x["raw_noisy_action"]], dim=1)  # (2, 65, 128)
    traj = torch.cat([traj, x["action_mask"].expand(-1, traj.shape[1], -1)], dim=2)  # (2, 65, 256)
    with torch.no_grad():
        lang, img, state = model.adapt_conditions(x["lang_tokens"], x["img_tokens"], traj)
    torch.testing.assert_close(lang, outputs["dbg_raw_adapted_lang"], atol=1e-5, rtol=0)
    torch.testing.assert_close(img, outputs["dbg_raw_adapted_img"], atol=1e-5, rtol=0)
    torch.testing.assert_close(state, outputs["dbg_raw_adapted_state_action"], atol=1e-5, rtol=0)
    out = _raw_forward(model, inputs)
    torch.testing.assert_close(out, outputs["raw_forward_out"], atol=1e-5, rtol=0)
    assert out.sum().item() == pytest.approx(-347.2263964, abs=1e-3)


def test_sampling_reproduces_official(model, inputs, outputs) -> None:
    seen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def record(step: int, t: torch.Tensor, x_t: torch.Tensor, model_output: torch.Tensor) -> None:
        seen[step] = (t.clone(), x_t.clone(), model_output.clone())

    out = model.predict_action(**_cond(inputs), init_noise=inputs["sample_init_noise"], num_inference_steps=5,
                               callback=record)
    assert torch.equal(torch.stack([seen[i][0] for i in range(5)]), outputs["sample_timesteps"])
    torch.testing.assert_close(seen[0][1], inputs["sample_init_noise"], atol=0, rtol=0)
    for i in range(5):
        torch.testing.assert_close(seen[i][2], outputs[f"dbg_sample_model_output_step{i}"], atol=1e-4, rtol=0)
        if i > 0:
            torch.testing.assert_close(seen[i][1], outputs[f"dbg_sample_x_step{i}"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out, outputs["predict_action_out"], atol=1e-4, rtol=0)
    assert int((out != 0).sum()) == 2 * 64 * 10  # multiplied by the 10-slot mask


def test_sampling_default_noise_uses_global_rng_like_official(model, inputs, outputs) -> None:
    torch.manual_seed(3)  # the official predict_action draws x_T with the global RNG first
    out = model.predict_action(**_cond(inputs))
    torch.testing.assert_close(out, outputs["predict_action_out"], atol=1e-4, rtol=0)


def test_compute_loss_reproduces_official(model, inputs, outputs) -> None:
    with torch.no_grad():
        res = model.compute_loss(**_cond(inputs), action_gt=inputs["loss_action_gt"], noise=inputs["loss_noise"],
                                 timesteps=inputs["loss_timesteps"])
    assert res.loss.item() == pytest.approx(1.0732818841934204, abs=1e-5)
    assert res.loss.item() == pytest.approx(outputs["compute_loss"].item(), abs=1e-5)
    assert res.sq_error.shape == (2, 64, 128)
    ac = model.noise_scheduler.alphas_cumprod[inputs["loss_timesteps"]]
    torch.testing.assert_close(ac, outputs["loss_alphas_cumprod_at_t"], atol=1e-7, rtol=0)


def test_compute_loss_default_draws_follow_official_rng_order(model, inputs) -> None:
    torch.manual_seed(4)
    with torch.no_grad():
        res = model.compute_loss(**_cond(inputs), action_gt=inputs["loss_action_gt"])
    assert torch.equal(res.noise, inputs["loss_noise"])
    assert torch.equal(res.timesteps, inputs["loss_timesteps"])
    assert res.loss.item() == pytest.approx(1.0732818841934204, abs=1e-5)


def test_loss_reductions_are_consistent(model, inputs) -> None:
    kw = dict(**_cond(inputs), action_gt=inputs["loss_action_gt"], noise=inputs["loss_noise"],
              timesteps=inputs["loss_timesteps"])
    with torch.no_grad():
        mean = model.compute_loss(**kw)
        masked = model.compute_loss(**kw, reduction="masked_mean")
        none = model.compute_loss(**kw, reduction="none")
    valid = inputs["action_mask"].expand(-1, 64, -1).bool()
    torch.testing.assert_close(mean.loss, none.loss.mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked.loss, none.loss[valid].mean(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="reduction"):
        model.compute_loss(**kw, reduction="sum")  # type: ignore[arg-type]


# ---- checkpoint layouts and strictness ------------------------------------------------------

def _corrupt(tmp_path: Path, model: RDTRunner, cfg: RDTConfig, edit) -> Path:
    save_rdt_checkpoint(model, cfg, tmp_path)
    sd = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    edit(sd)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    return tmp_path


@pytest.mark.parametrize("kind, key, edit, fragment", [
    ("missing", "model.blocks.1.cross_attn.kv.weight",
     lambda sd: sd.pop("model.blocks.1.cross_attn.kv.weight"), "missing: model.blocks.1.cross_attn.kv.weight (expected (128, 64))"),
    ("wrong shape", "model.x_pos_embed",
     lambda sd: sd.__setitem__("model.x_pos_embed", torch.zeros(1, 68, 64)),
     "mis-shaped: model.x_pos_embed expected (1, 67, 64), found (1, 68, 64)"),
    ("unexpected", "model.blocks.2.norm1.weight",
     lambda sd: sd.__setitem__("model.blocks.2.norm1.weight", torch.ones(64)), "unexpected: model.blocks.2.norm1.weight (found (64,))"),
])
def test_corrupted_checkpoint_fails_naming_the_key(tmp_path, loaded, kind, key, edit, fragment) -> None:
    ckpt = _corrupt(tmp_path, *loaded, edit)
    with pytest.raises(RDTCheckpointError) as err:
        load_rdt_checkpoint(ckpt)
    msg = str(err.value)
    assert fragment in msg, msg
    assert str(ckpt / "pytorch_model.bin") in msg


def test_config_mismatch_lists_all_differences(tmp_path, loaded) -> None:
    model, cfg = loaded
    save_rdt_checkpoint(model, cfg, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["rdt"]["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(RDTCheckpointError, match=r"21 missing, 0 unexpected, 0 mis-shaped") as err:
        load_rdt_checkpoint(tmp_path)
    assert "missing: model.blocks.2.attn.qkv.weight (expected (192, 64))" in str(err.value)
    assert "depth 3" in str(err.value)


def test_missing_directory_and_config_errors_are_one_line(tmp_path, loaded) -> None:
    with pytest.raises(RDTCheckpointError) as err:
        load_rdt_checkpoint(tmp_path / "nope")
    assert "\n" not in str(err.value) and "config.json" in str(err.value) and "pytorch_model.bin" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RDTCheckpointError) as err:
        load_rdt_checkpoint(empty)
    assert "\n" not in str(err.value) and "pytorch_model.bin" in str(err.value)
    only_weights = tmp_path / "run" / "ckpt"
    only_weights.mkdir(parents=True)
    torch.save(loaded[0].state_dict(), only_weights / "pytorch_model.bin")
    with pytest.raises(RDTCheckpointError) as err:
        load_rdt_checkpoint(only_weights)
    assert "\n" not in str(err.value) and "no config.json" in str(err.value)


@pytest.mark.parametrize("layout, weights_file", [
    ("safetensors", "model.safetensors"),
    ("deepspeed", "pytorch_model/mp_rank_00_model_states.pt"),
    ("ema", "ema/model.safetensors"),
])
def test_training_layouts_load(tmp_path, loaded, inputs, outputs, layout, weights_file) -> None:
    model, cfg = loaded
    written = save_rdt_checkpoint(model, cfg, tmp_path, layout=layout)
    assert written == tmp_path / weights_file
    for path in (tmp_path, written):  # the directory or the weights file itself
        reloaded, cfg2 = load_rdt_checkpoint(path)
        assert cfg2 == cfg
        torch.testing.assert_close(_raw_forward(reloaded, inputs), outputs["raw_forward_out"], atol=1e-5, rtol=0)


def test_deepspeed_file_with_config_in_parent_dir(tmp_path, loaded) -> None:
    model, cfg = loaded
    save_rdt_checkpoint(model, cfg, tmp_path)  # the run dir's config.json
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "checkpoint-100"
    (ckpt / "pytorch_model").mkdir(parents=True)
    torch.save({"module": sd, "global_steps": 100}, ckpt / "pytorch_model" / "mp_rank_00_model_states.pt")
    reloaded, _ = load_rdt_checkpoint(ckpt)
    assert torch.equal(reloaded.state_dict()["model.x_pos_embed"], sd["model.x_pos_embed"])


def test_bf16_round_trip(tmp_path, loaded, inputs) -> None:
    model, cfg = loaded
    save_rdt_checkpoint(model, cfg, tmp_path, dtype=torch.bfloat16)  # like the hub files
    stored = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert {v.dtype for v in stored.values()} == {torch.bfloat16}
    bf, _ = load_rdt_checkpoint(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in bf.parameters()} == {torch.bfloat16}
    for k, v in model.state_dict().items():
        assert torch.equal(bf.state_dict()[k], v.to(torch.bfloat16)), k
    # fp32 inputs into a bf16 model: no "mat1 and mat2 must have the same dtype".
    out = _raw_forward(bf, inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = _raw_forward(model, inputs)
    assert (out.float() - ref).abs().max() < 0.1
    fp32, _ = load_rdt_checkpoint(tmp_path, dtype=torch.float32)
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}


def test_bf16_training_step_runs(inputs) -> None:
    model = RDTRunner(RDTConfig.preset("rdt-tiny-fixture"), dtype=torch.bfloat16)
    res = model.compute_loss(**_cond(inputs), action_gt=inputs["loss_action_gt"])
    res.loss.backward()
    assert res.loss.dtype == torch.float32 and torch.isfinite(res.loss)
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())


# ---- language conditioning ------------------------------------------------------------------

def test_padded_language_positions_change_nothing(model, inputs) -> None:
    mask = inputs["lang_attn_mask"]
    assert mask[1].sum() == 5
    scrambled = inputs["lang_tokens"].clone()
    scrambled[1, 5:] = 100.0 * torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    zeroed = inputs["lang_tokens"].clone()
    zeroed[1, 5:] = 0
    base = _raw_forward(model, inputs)
    torch.testing.assert_close(_raw_forward(model, inputs, lang_tokens=scrambled), base, atol=0, rtol=0)
    torch.testing.assert_close(_raw_forward(model, inputs, lang_tokens=zeroed), base, atol=0, rtol=0)
    # Trimming the padding away entirely gives the same sample too.
    alone = {k: v[1:2] for k, v in inputs.items() if v.dim() > 0 and v.shape[0] == 2}
    trimmed = _raw_forward(model, {**alone, "lang_tokens": alone["lang_tokens"][:, :5],
                                   "lang_attn_mask": alone["lang_attn_mask"][:, :5]})
    torch.testing.assert_close(trimmed, base[1:2], atol=1e-5, rtol=0)


def test_lang_mask_matters(model, inputs) -> None:
    unmasked = torch.ones_like(inputs["lang_attn_mask"])
    diff = (_raw_forward(model, inputs, lang_attn_mask=unmasked) - _raw_forward(model, inputs)).abs().max()
    assert diff > 1e-3


def test_empty_instruction_gives_finite_output(model, inputs, tmp_path) -> None:
    torch.save({"name": "empty", "instruction": "", "embeddings": torch.zeros(1, 0, 32)}, tmp_path / "empty.pt")
    empty = load_lang_embedding(tmp_path / "empty.pt")
    assert empty.embeddings.shape == (0, 32)
    real = inputs["lang_tokens"][1, :5]
    tokens, mask = pad_lang_embeddings([real, empty.embeddings], max_len=8)
    assert tokens.shape == (2, 5, 32) and mask.tolist() == [[True] * 5, [False] * 5]
    lang = {"lang_tokens": tokens, "lang_attn_mask": mask}
    swap = {k: v.flip(0) if v.dim() > 0 and v.shape[0] == 2 else v for k, v in inputs.items()}
    out = _raw_forward(model, swap, **lang)
    assert torch.isfinite(out).all()
    # The sample with language is unaffected by its empty neighbour.
    ref = _raw_forward(model, inputs)[1]
    torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)
    # "No language" is a real condition: it differs from having language.
    assert (out[1] - _raw_forward(model, swap)[1]).abs().max() > 1e-4
    # A single empty instruction alone: one zero token, masked out.
    tokens, mask = pad_lang_embeddings([empty.embeddings])
    assert tokens.shape == (1, 1, 32) and not mask.any()
    one = {k: v[:1] for k, v in inputs.items() if v.dim() > 0 and v.shape[0] == 2}
    assert torch.isfinite(_raw_forward(model, one, lang_tokens=tokens, lang_attn_mask=mask)).all()
    sampled = model.predict_action(tokens, mask, one["img_tokens"], one["state_tokens"], one["action_mask"],
                                   one["ctrl_freqs"], init_noise=inputs["sample_init_noise"][:1])
    assert torch.isfinite(sampled).all()


def test_lang_file_missing_error_says_how_to_produce(tmp_path) -> None:
    with pytest.raises(LangEmbeddingError) as err:
        load_lang_embedding(tmp_path / "pick_up_the_bowl.pt")
    msg = str(err.value)
    assert "pick_up_the_bowl.pt" in msg and "encode_lang.py" in msg and "model.lang_embeddings" in msg
    assert "T5" in msg
    with pytest.raises(LangEmbeddingError, match="model.lang_embeddings"):
        LangEmbeddingStore.from_path(None)


def test_lang_store_lookup_and_formats(tmp_path) -> None:
    e1 = torch.randn(1, 7, 4096).to(torch.bfloat16)
    torch.save({"name": "task0", "instruction": "Pick up the black bowl", "embeddings": e1}, tmp_path / "task0.pt")
    torch.save(torch.randn(4, 4096), tmp_path / "task1.pt")  # encode_lang_batch.py style
    store = LangEmbeddingStore.from_path(tmp_path)
    assert len(store) == 2
    got = store.get("  pick up the  black bowl ")
    assert torch.equal(got.embeddings, e1[0]) and got.name == "task0"
    assert store.get("task1").embeddings.shape == (4, 4096)
    with pytest.raises(LangEmbeddingError, match="no embedding for instruction"):
        store.get("open the drawer")
    tokens, mask = pad_lang_embeddings([got.embeddings, store.get("task1").embeddings], dtype=torch.float32)
    assert tokens.shape == (2, 7, 4096) and tokens.dtype == torch.float32
    assert mask.sum(1).tolist() == [7, 4] and tokens[1, 4:].abs().sum() == 0
    with pytest.raises(ValueError, match="max_lang_cond_len"):
        pad_lang_embeddings([torch.zeros(9, 8)], max_len=8)


# ---- training features ----------------------------------------------------------------------

def _loss_and_grads(model: RDTRunner, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    res = model.compute_loss(**_cond(inputs), action_gt=inputs["loss_action_gt"], noise=inputs["loss_noise"],
                             timesteps=inputs["loss_timesteps"])
    res.loss.backward()
    return res.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_same_loss_and_grads(loaded, inputs) -> None:
    model, cfg = load_rdt_checkpoint(FIXTURE / "checkpoint")
    model.train()
    loss_a, grads_a = _loss_and_grads(model, inputs)
    model.set_gradient_checkpointing(True)
    loss_b, grads_b = _loss_and_grads(model, inputs)
    assert loss_a.item() == pytest.approx(1.0732818841934204, abs=1e-5)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-7, rtol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 72
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], atol=1e-6, rtol=1e-5)


def test_freeze_groups(inputs) -> None:
    model = RDTRunner(RDTConfig.preset("rdt-tiny-fixture"))
    touched = model.freeze(["adaptors", "blocks:0-0", "pos_embed"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(touched)
    expected = {n for n in model.state_dict() if n.startswith(("lang_adaptor.", "img_adaptor.", "state_adaptor.",
                                                                 "model.blocks.0."))}
    expected |= {"model.x_pos_embed", "model.lang_cond_pos_embed", "model.img_cond_pos_embed"}
    assert frozen == expected
    res = model.compute_loss(**_cond(inputs), action_gt=inputs["loss_action_gt"])
    res.loss.backward()
    assert all((p.grad is None) == (n in frozen) for n, p in model.named_parameters())
    model.unfreeze("all")
    assert all(p.requires_grad for p in model.parameters())
    model.freeze("final_layer")
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        n for n in model.state_dict() if n.startswith("model.final_layer.")}
    with pytest.raises(ValueError, match="outside 0-1"):
        model.freeze("blocks:0-13")
    with pytest.raises(ValueError, match="unknown RDT parameter group"):
        model.freeze("encoder")


def test_rdt_170m_freeze_block_range_on_meta() -> None:
    with torch.device("meta"):
        model = RDTRunner(RDTConfig.preset("rdt-170m"))
    names = model.freeze("blocks:0-13")
    assert len(names) == 14 * 21
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("model.blocks."))
    assert model.model.final_layer.norm_final.weight.requires_grad
