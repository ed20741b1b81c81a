"""The real Wan2.1 / Self-Forcing model path on tiny random configs (CPU, offline).

A diffusers-format directory (transformer/, vae/, text_encoder/, tokenizer/) is written from
tiny random diffusers / transformers models and a word-level tokenizer built in memory, then
loaded through ``toolkit.models.real.wan_t2v`` exactly as a downloaded Wan2.1-T2V-1.3B would be.
"""

import re
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from strategies import Full
from toolkit.core.model import WanCausalModel
from toolkit.core.rollout import rollout
from toolkit.core.sampling import BlockSampler
from toolkit.core.testing import block_causal_reference
from toolkit.errors import ConfigError
from toolkit.models.real import (
    SUBFOLDERS,
    WAN_T2V_1_3B,
    CheckpointError,
    StreamingWanVAE,
    UMT5PromptEncoder,
    WanT2VConfig,
    load_checkpoint,
    read_folder,
    spec_for,
    wan_t2v,
)
from toolkit.models.zoo import wan_t2v_1_3b_spec

TINY = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 24,
        "in_channels": 4, "out_channels": 4, "text_dim": 16, "freq_dim": 32, "ffn_dim": 64,
        "num_layers": 2, "rope_max_seq_len": 1024}
WORDS = ["<pad>", "</s>", "<unk>", "a", "red", "fox", "runs", "in", "the", "snow", "city",
         "street", "at", "night", "rain"]
SIZE = {"height": 32, "width": 32, "text_length": 16}  # 4x4 latent grid, 4 tokens per frame


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_vae():
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.7, 2.0, 1.0])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("wan-tiny")
    torch.manual_seed(0)
    WanTransformer3DModel(**TINY).save_pretrained(root / "transformer")
    tiny_vae().save_pretrained(root / "vae")
    cfg = UMT5Config(vocab_size=len(WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=1,
                     num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                     eos_token_id=1, decoder_start_token_id=0)
    UMT5EncoderModel(cfg).save_pretrained(root / "text_encoder")
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def real(tiny_dir):
    return wan_t2v(str(tiny_dir), dtype="float32", **SIZE)


def to_original(state):
    """diffusers' Wan naming back to the original Wan naming (the inverse of diffusers' map)."""
    rules = [(r"^condition_embedder\.time_embedder\.linear_1", "time_embedding.0"),
             (r"^condition_embedder\.time_embedder\.linear_2", "time_embedding.2"),
             (r"^condition_embedder\.text_embedder\.linear_1", "text_embedding.0"),
             (r"^condition_embedder\.text_embedder\.linear_2", "text_embedding.2"),
             (r"^condition_embedder\.time_proj", "time_projection.1"),
             (r"\.attn1\.", ".self_attn."), (r"\.attn2\.", ".cross_attn."),
             (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."),
             (r"\.to_out\.0\.", ".o."), (r"\.norm2\.", ".norm3."),
             (r"\.ffn\.net\.0\.proj\.", ".ffn.0."), (r"\.ffn\.net\.2\.", ".ffn.2."),
             (r"^(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
             (r"^scale_shift_table$", "head.modulation"), (r"^proj_out\.", "head.head.")]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value.clone()
    return out


def save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {}
        for k, v in state.items():  # a wrapper becomes a key prefix in a flat file
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict)
                        else {k: v})
        save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def fresh(seed=1):
    torch.manual_seed(seed)
    return WanTransformer3DModel(**TINY)


def test_loads_diffusers_directory_with_self_forcing_sampling(real, tiny_dir):
    assert isinstance(real, WanCausalModel)
    s = real.spec
    assert (s.num_layers, s.latent_height, s.block_frames, s.tokens_per_frame) == (2, 4, 3, 4)
    saved, _ = read_folder(tiny_dir / "transformer")
    assert saved.keys() == real.transformer.state_dict().keys()
    for k, v in saved.items():
        assert torch.equal(real.transformer.state_dict()[k], v), k
    sigmas = BlockSampler(real.sampler).sigmas  # Self-Forcing's warped [1000, 750, 500, 250]
    assert sigmas == pytest.approx([1.0, 0.9375, 5 * 0.5 / 3, 0.625, 0.0], abs=1e-6)
    assert real.sampler.mode == "renoise" and real.prediction == "flow"


def test_prompt_encoder_equals_diffusers_wan_pipeline(real):
    from diffusers import WanPipeline

    enc = real.prompt_encoder
    assert isinstance(enc, UMT5PromptEncoder)
    prompts = ["a red fox runs in the snow", "city street at night  "]
    pipe = SimpleNamespace(tokenizer=enc.tokenizer, text_encoder=enc.encoder)
    with torch.no_grad():  # the wrapper encodes without autograd, as the pipeline does
        ref = WanPipeline._get_t5_prompt_embeds(pipe, prompts, max_sequence_length=16,
                                                device=torch.device("cpu"), dtype=torch.float32)
    got = enc(prompts)
    print(f"UMT5 wrapper vs WanPipeline: max abs diff {(got - ref).abs().max().item():.1e}")
    assert torch.equal(got, ref)
    assert got[0, 8:].abs().sum() == 0 and got[0, 7].abs().sum() > 0  # 7 words + </s>


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("wrapper", [None, "generator_ema"])
@pytest.mark.parametrize("prefix", ["", "model."])
def test_original_layout_checkpoint_round_trips(tmp_path, suffix, wrapper, prefix):
    source = fresh(seed=2)
    original = to_original(source.state_dict())
    assert {"blocks.0.self_attn.q.weight", "blocks.1.norm3.weight", "head.head.weight",
            "head.modulation", "blocks.0.modulation", "time_projection.1.weight",
            "text_embedding.2.bias", "blocks.0.ffn.0.weight"} <= set(original)
    state = {prefix + k: v for k, v in original.items()}
    if wrapper:
        decoy = {k: torch.zeros_like(v) for k, v in state.items()}  # the non-EMA weights
        state = {"generator": decoy, wrapper: state}
    target = fresh(seed=3)
    where = load_checkpoint(target, save(state, tmp_path / f"ckpt{suffix}"))
    assert (wrapper or "") in where
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_checkpoint_key_and_diffusers_layout(tmp_path):
    source, target = fresh(seed=4), fresh(seed=5)
    zeros = {k: torch.zeros_like(v) for k, v in to_original(source.state_dict()).items()}
    path = save({"generator": zeros, "generator_ema": to_original(source.state_dict())},
                tmp_path / "both.pt")
    load_checkpoint(target, path, key="generator")
    assert all(v.abs().sum() == 0 for v in target.state_dict().values())
    load_checkpoint(target, save(source.state_dict(), tmp_path / "diffusers.safetensors"))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
    fsdp = {"model._fsdp_wrapped_module." + k: v for k, v in zeros.items()}
    load_checkpoint(target, save({"generator": fsdp}, tmp_path / "fsdp.pt"))
    assert all(v.abs().sum() == 0 for v in target.state_dict().values())
    with pytest.raises(CheckpointError, match=r"no 'ema' entry.*generator"):
        load_checkpoint(target, path, key="ema")


def test_checkpoint_errors_name_keys_and_shapes(tmp_path):
    model = fresh()
    original = to_original(model.state_dict())
    extra = {**original, **{f"img_proj.{i:02d}.weight": torch.zeros(2) for i in range(12)}}
    with pytest.raises(CheckpointError, match=r"unexpected 12 key\(s\): img_proj\.00\.weight.*"
                                              r"img_proj\.09\.weight, \.\.\.") as err:
        load_checkpoint(model, save(extra, tmp_path / "extra.pt"))
    assert "img_proj.10.weight" not in str(err.value)  # first ten only
    lacking = {k: v for k, v in original.items() if not k.startswith("head.")}
    with pytest.raises(CheckpointError, match=r"missing 3 key\(s\): proj_out\.bias"):
        load_checkpoint(model, save(lacking, tmp_path / "lacking.pt"))
    bad = {**original, "text_embedding.0.weight": torch.zeros(48, 32)}
    with pytest.raises(CheckpointError, match=r"'text_embedding\.0\.weight' \(diffusers "
                                              r"'condition_embedder\.text_embedder\.linear_1\."
                                              r"weight'\): checkpoint \(48, 32\) vs model "
                                              r"\(48, 16\)"):
        load_checkpoint(model, save(bad, tmp_path / "bad.pt"))
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(model, tmp_path / "absent.pt")


def test_missing_directory_and_subfolders_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere: no such directory.*transformer/, vae/, "
                                          r"text_encoder/, tokenizer/"):
        wan_t2v(str(tmp_path / "nowhere"))
    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae").mkdir()
    with pytest.raises(ConfigError, match=r"missing subfolder\(s\) text_encoder/, tokenizer/"):
        wan_t2v(str(tmp_path))
    with pytest.raises(ConfigError, match=r"model\.path is required"):
        wan_t2v(None)




def test_full_cache_equals_block_causal_forward_at_self_forcing_settings(real):
    prompts = ["a red fox runs", "rain at night"]
    with torch.no_grad():
        ref = block_causal_reference(real, prompts, 9, seed=1)
    got = rollout(real, Full(), prompts, 9, seed=1, decode=False).latents
    diff = (got - ref).abs().max().item()
    print(f"full vs block-causal forward (renoise, 4 steps, blocks of 3): max abs diff {diff:.2e}")
    assert diff < 1e-4


def test_streaming_decode_equals_one_shot_decode():
    torch.manual_seed(0)
    raw = tiny_vae().eval()
    vae = StreamingWanVAE(raw, block_frames=3)
    latents = torch.randn(2, 4, 7, 4, 4)
    mean, std = (torch.tensor(raw.config.latents_mean).view(1, -1, 1, 1, 1),
                 torch.tensor(raw.config.latents_std).view(1, -1, 1, 1, 1))
    with torch.no_grad():
        ref = ((raw.decode(latents * std + mean).sample + 1) / 2).transpose(1, 2)
    got = vae.decode(latents)
    vae.reset()
    uneven = torch.cat([vae.decode_block(latents[:, :, a:b]) for a, b in ((0, 2), (2, 6), (6, 7))],
                       dim=1)
    diff = max((got - ref).abs().max().item(), (uneven - ref).abs().max().item())
    print(f"streaming vs one-shot decode: max abs diff {diff:.1e}")
    assert got.shape == (2, 1 + 4 * 6, 3, 32, 32) and diff < 1e-5
    assert vae.encode(got[:, :5]).shape == (2, 4, 2, 4, 4)


def test_every_strategy_runs_and_decodes(tiny_dir):
    from toolkit.registry import STRATEGIES
    from toolkit.runs.config import build_strategy

    model = wan_t2v(str(tiny_dir), dtype="float32", block_frames=4, **SIZE)
    for name in STRATEGIES.names():
        strategy = build_strategy({"_target_": name})
        out = rollout(model, strategy, ["a red fox"], 16, decode=False)
        assert torch.isfinite(out.latents).all(), name
    frames = rollout(model, Full(), ["a red fox"], 8).frames
    assert frames.shape == (1, 29, 3, 32, 32) and frames.min() >= 0 and frames.max() <= 1


def test_bf16_keeps_diffusers_fp32_modules_and_runs(tiny_dir, real):
    model = wan_t2v(str(tiny_dir), dtype="bfloat16", **SIZE)
    fp32 = {k for k, v in model.transformer.state_dict().items() if v.dtype == torch.float32}
    assert fp32 == {"scale_shift_table", "blocks.0.scale_shift_table",
                    "blocks.1.scale_shift_table", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
                    "blocks.1.norm2.weight", "blocks.1.norm2.bias",
                    *(f"condition_embedder.time_embedder.linear_{i}.{p}" for i in (1, 2)
                      for p in ("weight", "bias"))}
    assert model.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    a = rollout(model, Full(), ["a red fox"], 3, seed=0, decode=False).latents
    b = rollout(real, Full(), ["a red fox"], 3, seed=0, decode=False).latents
    rel = ((a - b).norm() / b.norm()).item()
    print(f"bf16 vs fp32 rollout: relative error {rel:.2e}")
    assert rel < 0.05


def test_random_weights_builder_and_real_sizes():
    model = wan_t2v(None, weights="random", dtype="float32", config=TINY, **SIZE)
    assert model.vae is None and model.encode_prompt(["x", "y"]).shape == (2, 16, 48)
    assert torch.isfinite(rollout(model, Full(), ["x"], 6, decode=False).latents).all()
    with torch.device("meta"):
        big = WanTransformer3DModel.from_config(WAN_T2V_1_3B)
    assert 1.41e9 < sum(p.numel() for p in big.parameters()) < 1.43e9
    spec = spec_for(big, 480, 832, 4, "bfloat16", train_frames=20)
    assert spec == wan_t2v_1_3b_spec(block_frames=4)
    assert spec.tokens_per_frame == 1560 and spec.kv_bytes_per_token == 2 * 30 * 1536 * 2
    with pytest.raises(ConfigError, match=r"model\.checkpoint needs weights=pretrained"):
        wan_t2v(None, weights="random", checkpoint="x.pt")
    with pytest.raises(ConfigError, match=r"has 4 entries but model\.steps=8"):
        wan_t2v(None, weights="random", steps=8)
    assert SUBFOLDERS == ("transformer", "vae", "text_encoder", "tokenizer")


def test_wan_t2v_config_is_the_schema_and_the_old_calls_still_work():
    """``WanT2VConfig`` holds exactly the Hydra model node's fields; Hydra's keyword call, the
    positional path and a config build the same model; bad values fail on construction."""
    import dataclasses

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from toolkit.runs.config import compose_config

    cfg = compose_config(["model=wan-t2v-1.3b-weights", "weights=random"])
    node = OmegaConf.to_container(cfg.model, resolve=True)
    assert node.pop("_target_") == "toolkit.models.real.wan_t2v"
    fields = {f.name for f in dataclasses.fields(WanT2VConfig)}
    assert set(node) <= fields and fields - set(node) == {"fps", "config"}
    assert WanT2VConfig(**node).timesteps == (1000.0, 750.0, 500.0, 250.0)
    tiny = {**node, "dtype": "float32", "config": TINY, **SIZE}
    models = [instantiate({"_target_": "toolkit.models.real.wan_t2v", **tiny}),
              wan_t2v(WanT2VConfig(**tiny)),
              wan_t2v(None, **{k: v for k, v in tiny.items() if k != "path"})]
    latents = [rollout(m, Full(), ["x"], 6, seed=1, decode=False).latents for m in models]
    assert models[0].spec == models[1].spec == models[2].spec
    for other in latents[1:]:
        torch.testing.assert_close(other, latents[0], rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"model\.dtype='fp8'"):
        WanT2VConfig(weights="random", dtype="fp8")
    with pytest.raises(TypeError, match="nosuch"):
        wan_t2v(None, weights="random", nosuch=1)


class OutOfMemoryAt(Full):
    """Full cache that raises CUDA's out-of-memory error when block ``at`` begins."""

    at = 2

    def begin_block(self, index):
        if index == self.at:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().begin_block(index)


def test_realbench_records_blocks_and_survives_oom():
    from toolkit.bench.realsize import run_strategy
    from toolkit.models.zoo import tiny_random

    model = tiny_random(seed=0)
    spec = model.spec
    ok = run_strategy(model, "full", Full(), 8, "x")
    assert ok.status == "ok" and [b["index"] for b in ok.blocks] == [0, 1, 2, 3]
    assert ok.peak_kv == 8 * spec.tokens_per_frame * spec.kv_bytes_per_token  # batch 1
    assert ok.cuda_peak is None and ok.ms(slice(None)) > 0
    strategy = OutOfMemoryAt()
    boom = run_strategy(model, "boom", strategy, 8, "x")
    assert boom.status == "OOM at block 2" and len(boom.blocks) == 2
    assert strategy.blocks == []  # the cache was dropped before the next strategy


def test_bench_routes_real_models_and_refuses_them_on_cpu(tmp_path, capsys):
    from toolkit.bench.realsize import wants_realbench
    from toolkit.cli import main

    assert not wants_realbench(["model=tiny-random"])
    assert wants_realbench(["model=tiny-random", "device=cuda"])
    assert wants_realbench(["model=wan-t2v-1.3b", "weights=random"])
    assert wants_realbench(["model=wan-t2v-1.3b-weights"])
    assert main(["bench", "model=wan-t2v-1.3b", "weights=random", "video.seconds=10"]) == 2
    assert "needs device=cuda" in capsys.readouterr().out
    assert main(["realbench", "model=wan-t2v-1.3b"]) == 2  # the spec-only twin has no forward
    assert "spec-only" in capsys.readouterr().out
    assert main(["realbench", "model=tiny-random", "video.latent_frames=6",
                 "strategies=[full,window]", f"run_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "per block" in out and "full" in out and "window" in out
    (record,) = (tmp_path / "bench").glob("realbench-*.json")
    import json

    results = json.loads(record.read_text())["results"]
    assert [(r["strategy"], r["status"], len(r["blocks"])) for r in results] == \
        [("full", "ok", 3), ("window", "ok", 3)]


def test_check_table_sets_runs_against_the_memory_accounting():
    """The CPU side of the GPU check: runs and meta accounting of the same strategies."""
    from rich.console import Console

    from strategies import Window
    from strategies.packforcing import PackForcing
    from toolkit.bench.realsize import check, check_table
    from toolkit.models.zoo import tiny_random

    model = tiny_random(seed=0)
    strategies = {"full": Full(), "window": Window(window_frames=4), "packforcing":
                  PackForcing(sink_frames=2, recent_frames=2, capacity=2, top_k=1)}
    results, reports = check(model, strategies, 12, "x")
    assert [r.status for r in results] == ["ok"] * 3
    for r in results:  # the run's Trace and the meta accounting agree on the KV held
        assert r.peak_kv == reports[r.strategy].peak.total_bytes
        assert reports[r.strategy].peak_live > r.peak_kv  # working copies + the block's own
    assert strategies["full"].blocks == []  # run and reset; the accounting ran on a copy
    console = Console(width=200, record=True)
    console.print(check_table(results, reports, None))
    text = console.export_text()
    assert "KV path peak GiB (memory)" in text and "n/a" in text
