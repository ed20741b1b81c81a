"""Real-video measures (DINO, CLIP, RAFT) on tiny randomly initialised networks saved locally.

The fixture builds networks of the real classes from small configs and saves them in the layouts
the loaders read (docs/real-models.md); nothing is downloaded. Random weights make the numbers
meaningless but the plumbing and the directions exact: identical frames give identical features.
"""

import json
import logging

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from toolkit.cli import main
from toolkit.core.spec import ModelSpec
from toolkit.metrics import METRIC_SETS, METRICS, MetricInput, Unavailable, compute
from toolkit.metrics.backends import RaftFlow, flow_top_magnitude, load_hf, load_raft
from toolkit.metrics.features import make_backend
from toolkit.metrics.real import consistency, dynamic_rule, interpolate_middle, prompt_text
from toolkit.runs.tracking import resolve_uri
from toolkit.worlds.sprites import prompt_for_seed, simulate, split_seed

REAL = ["subject_consistency", "subject_consistency_score", "background_consistency",
        "background_consistency_score", "clip_score", "clip_drift", "clip_drift_end",
        "flow_smoothness", "flow_smoothness_score", "flow_magnitude", "flow_dynamic",
        "vbench_dynamic_degree"]
CURVES = [m for m in REAL if METRICS.get(m).kind != "scalar"]
SPEC = ModelSpec(num_layers=1, num_heads=1, head_dim=24, latent_channels=12, latent_height=8,
                 latent_width=8, block_frames=4, train_frames=20, latent_fps=16.0)
PROMPT = prompt_for_seed(0, "heldout")
FAST = {"dino_size": 32, "raft_iters": 2, "backend_device": "cpu"}


def tiny_vocab() -> dict[str, int]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return vocab


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Tiny random dino (DINOv2 and DINO ViT), clip and raft weights in the loaders' layouts."""
    from torchvision.models.optical_flow import raft_small
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTokenizer,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTModel,
    )

    root = tmp_path_factory.mktemp("weights")
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64}
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**small, patch_size=8, image_size=32)).save_pretrained(root / "dino")
    ViTModel(ViTConfig(**small, patch_size=8, image_size=32),
             add_pooling_layer=False).save_pretrained(root / "dino-vit")
    text = {**small, "vocab_size": len(tiny_vocab()), "max_position_embeddings": 32,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    CLIPModel(CLIPConfig(text_config=text, vision_config={**small, "patch_size": 8,
                                                          "image_size": 32},
                         projection_dim=16)).save_pretrained(root / "clip")
    CLIPTokenizer(vocab=tiny_vocab(), merges=[]).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32, image_mean=[0.5, 0.5, 0.5],
                       image_std=[0.25, 0.25, 0.25]).save_pretrained(root / "clip")
    torch.save(raft_small(weights=None).state_dict(), root / "raft_small.pth")
    still = raft_small(weights=None)  # a RAFT that answers "no motion": its flow head outputs 0
    torch.nn.init.zeros_(still.update_block.flow_head.conv2.weight)
    torch.nn.init.zeros_(still.update_block.flow_head.conv2.bias)
    torch.save(still.state_dict(), root / "raft_still.pth")
    return {"dino": str(root / "dino"), "dino-vit": str(root / "dino-vit"),
            "clip": str(root / "clip"), "raft": str(root / "raft_small.pth"),
            "raft-still": str(root / "raft_still.pth"), "root": root}


def video(frames: int = 16, seed: int = 0) -> torch.Tensor:
    return simulate([PROMPT], [split_seed(seed, "heldout")], frames)[0]  # (F, 3, 16, 16)


def run(frames, which, backends, prompt=PROMPT, **kw):
    opts = {**FAST, **kw.pop("options", {})}
    return compute(MetricInput(frames=frames, prompt=prompt, spec=SPEC, backends=backends,
                               options=opts, **kw), which)


def test_the_real_set_declares_every_measure():
    assert set(REAL) <= set(METRIC_SETS["real"])
    for name in REAL:
        m = METRICS.get(name)
        assert m.unit and m.description and m.direction in ("higher", "lower")
    assert "stand-in" in METRICS.get("flow_smoothness").description.lower()


def test_backends_give_features_of_the_right_shape(nets):
    frames = video(6).numpy()
    for name in ("dino", "dino-vit"):
        net = make_backend("dino", nets[name], FAST)
        f = net(frames)
        assert f.shape == (6, 32) and np.isfinite(f).all()
        np.testing.assert_array_equal(f, net(frames))  # deterministic
    clip = make_backend("clip", nets["clip"], FAST)
    assert clip(frames).shape == (6, 16) and clip.text(["a red fox", "b"]).shape == (2, 16)
    assert list(clip.norm[1]) == [0.25] * 3  # read from preprocessor_config.json
    raft = make_backend("raft", nets["raft"], FAST)
    x = raft.prepare(frames)
    assert x.shape == (6, 3, 128, 128)  # 16 px enlarged 8x: RAFT needs 128
    assert raft.flow(x[:-1], x[1:]).shape == (5, 2, 128, 128)
    assert raft(frames).shape == (6, 1)
    odd = RaftFlow.prepare(np.zeros((2, 3, 130, 90), np.float32))
    assert odd.shape == (2, 3, 260, 180)  # both sides reach 128; padding to 8 happens in flow
    assert make_backend("raft", nets["raft"], FAST).flow(odd, odd).shape == (2, 2, 260, 180)


def test_frozen_video_is_consistent_and_motionless(nets):
    frozen = video(1).repeat(12, 1, 1, 1)
    b = {"dino": nets["dino"], "clip": nets["clip"], "raft": nets["raft-still"]}
    res = run(frozen, REAL, b)
    assert not res.unavailable
    for key in ("subject_consistency", "background_consistency"):
        curve = res.values[key][1]
        assert np.isnan(curve[0]) and np.allclose(curve[1:], 1)  # frame 0 has no score
        assert res.values[f"{key}_score"] == pytest.approx(1)
    np.testing.assert_allclose(res.values["clip_drift"][1], 0, atol=1e-9)
    assert res.values["clip_drift_end"] == pytest.approx(0, abs=1e-9)
    assert res.values["vbench_dynamic_degree"] == 0
    assert np.nanmax(res.values["flow_magnitude"][1]) == 0
    assert np.nansum(res.values["flow_dynamic"][1]) == 0
    assert res.values["flow_smoothness_score"] == pytest.approx(1)
    np.testing.assert_array_equal(res.values["clip_score"][0], [0, 4, 8])  # block steps


def test_shuffled_video_scores_lower(nets):
    v = video(24)
    shuffled = v[torch.randperm(24, generator=torch.Generator().manual_seed(0))]
    b = {"dino": nets["dino"], "clip": nets["clip"], "raft": nets["raft-still"]}
    which = ["subject_consistency_score", "background_consistency_score",
             "flow_smoothness_score"]
    calm, mixed = run(v, which, b), run(shuffled, which, b)
    for key in which:
        assert mixed.values[key] < calm.values[key] <= 1 + 1e-9, key


def test_flow_measures_do_not_depend_on_the_chunk_size(nets, monkeypatch):
    import toolkit.metrics.real as real

    v, b = video(12), {"raft": nets["raft"]}
    curves = ["flow_magnitude", "flow_smoothness"]
    whole = run(v, [*curves, "vbench_dynamic_degree"], b)
    monkeypatch.setattr(real, "CHUNK", 2)
    parts = run(v, [*curves, "vbench_dynamic_degree"], b, options={"backend_batch": 3})
    for key in curves:
        np.testing.assert_allclose(parts.values[key][1], whole.values[key][1], rtol=1e-5,
                                   atol=1e-6)
    assert parts.values["vbench_dynamic_degree"] == whole.values["vbench_dynamic_degree"]
    mag = whole.values["flow_magnitude"][1]  # 16 fps: VBench samples every 2nd frame
    assert np.isfinite(mag[2::2]).all() and np.isnan(mag[1::2]).all() and np.isnan(mag[0])


def test_consistency_is_vbench_formula():
    f = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    got = consistency(f)
    s = np.sqrt(0.5)
    want = [np.nan, (s + s) / 2, (s + 0) / 2, (0 + 0) / 2]  # cosines below 0 count as 0
    np.testing.assert_allclose(got, want)


def test_dynamic_degree_follows_vbench_thresholds():
    flow = torch.zeros(3, 2, 128, 160)
    flow[1, 0] = 3.0  # 3 px at a 128-px short side = 6 px at 256
    flow[2, 1, :10, :10] = 20.0  # a small patch: under 5% of the pixels
    scores = flow_top_magnitude(flow)
    k = int(128 * 160 * 0.05)
    np.testing.assert_allclose(scores, [0, 6, 20 * 100 / k * 2], rtol=1e-6)
    moving, dynamic, thr = dynamic_rule(np.array([5.9, 6.1, 7, 8]), sampled=16, fps=16)
    assert thr == 6 and list(moving) == [False, True, True, True] and not dynamic  # needs 4
    assert dynamic_rule(np.array([6.1, 7, 8, 9]), sampled=16, fps=16)[1]
    assert dynamic_rule(np.array([7.0]), sampled=2, fps=4)[2] == 12  # slow video: 6 x 8 / 4


def test_interpolation_recreates_a_translation():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
    frame = lambda t: (0.5 + 0.4 * torch.sin((xx - 2 * t) / 3) * torch.cos(yy / 5)).expand(  # noqa: E731
        1, 3, 32, 48)
    a, b, c = frame(0), frame(1), frame(2)
    true = torch.zeros(1, 2, 32, 48)
    true[:, 0] = 4.0  # 2 px per frame to the right: 4 px from a to c
    inner = (..., slice(4, -4), slice(6, -6))
    good = (interpolate_middle(a, c, true) - b)[inner].abs().mean()
    still = (interpolate_middle(a, c, torch.zeros_like(true)) - b)[inner].abs().mean()
    assert good < 1e-5 < still / 100


class Schedule:
    """A prompt schedule as the harness gives one: the prompt in force via ``.at(frame)``."""

    def __init__(self, switch: int, first: str, second: str) -> None:
        self.switch, self.first, self.second = switch, first, second

    def at(self, frame: int) -> str:
        return self.first if frame < self.switch else self.second


def test_clip_score_uses_the_prompt_in_force_and_drift_restarts(nets):
    v = video(16)
    sched = Schedule(8, "a red circle", "a blue square on navy")
    res = run(v, ["clip_score", "clip_drift"], {"clip": nets["clip"]}, prompt=sched)
    clip = make_backend("clip", nets["clip"], FAST)
    img, txt = clip(v.numpy()), clip.text([sched.first, sched.second])
    want = []
    for s in range(4):
        t = txt[0] if s < 2 else txt[1]
        seg = img[4 * s: 4 * s + 4]
        cos = seg @ t / np.linalg.norm(seg, axis=1) / np.linalg.norm(t)
        want.append(100 * np.clip(cos, 0, None).mean())
    score = res.values["clip_score"][1]
    np.testing.assert_allclose(score, want, rtol=1e-6)
    drift = res.values["clip_drift"][1]
    np.testing.assert_allclose(drift, [0, want[0] - want[1], 0, want[2] - want[3]], atol=1e-9)
    assert prompt_text(PROMPT, 0) == PROMPT.text() and prompt_text(sched, 9) == sched.second
    assert "needs the video's prompt" in run(v, ["clip_score"], {"clip": nets["clip"]},
                                             prompt=None).unavailable["clip_score"]


def test_clip_reads_switch_response_and_carry_over(nets):
    """A still video under A -> B -> A: CLIP prefers one text on every frame, so exactly one of
    the two switches takes at once and the other never takes, carrying all its frames over;
    which one is the text CLIP scores higher."""
    from toolkit.core.schedule import PromptSchedule

    v = video(1).repeat(24, 1, 1, 1)  # one frame, held
    a, b = "a red circle", "a blue square on navy"
    sched = PromptSchedule(((0, a), (8, b), (16, a)))
    names = ["clip_switch_response", "clip_switch_never", "clip_carry_over"]
    got = run(v, names, {"clip": nets["clip"]}, prompt=sched).values
    clip = make_backend("clip", nets["clip"], FAST)
    img, txt = clip(v[:1].numpy())[0], clip.text([a, b])
    cos = [img @ t / np.linalg.norm(img) / np.linalg.norm(t) for t in txt]
    assert cos[0] != cos[1]
    assert got["clip_switch_never"] == 0.5 and got["clip_switch_response"] == 0
    assert got["clip_carry_over"] == 4.0  # the switch that never took: its 8 frames, of 2
    from toolkit.metrics.switching import clip_switches

    inp = MetricInput(frames=v, prompt=sched, spec=SPEC, backends={"clip": nets["clip"]},
                      options=FAST)
    first, second = (s.new["prompt"].tolist() for s in clip_switches(inp))
    assert (first, second) == (([0.0] * 8, [1.0] * 8) if cos[0] > cos[1] else
                               ([1.0] * 8, [0.0] * 8))  # into the preferred text: at once
    single = run(v, names, {"clip": nets["clip"]}, prompt=a)
    assert set(single.inapplicable) == set(names)


def test_missing_or_wrong_weights_are_unavailable_never_random(nets, tmp_path):
    v = video(8)
    root = nets["root"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((root / "dino" / "config.json")
                                                          .read_text())
    (tmp_path / "two").mkdir()
    for name in ("a.pth", "b.pth"):
        (tmp_path / "two" / name).write_bytes((root / "raft_small.pth").read_bytes())
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    torch.save({"x": torch.zeros(2)}, tmp_path / "other.pth")
    cases = [
        ("subject_consistency", {}, "set tracking.backends.dino=PATH"),
        ("subject_consistency", {"dino": str(tmp_path / "nope")}, "does not exist"),
        ("subject_consistency", {"dino": str(tmp_path / "empty")}, "no config.json"),
        ("subject_consistency", {"dino": nets["clip"]}, "holds a 'clip' model"),
        ("subject_consistency", {"dino": str(tmp_path / "config-only")}, "could not be loaded"),
        ("background_consistency", {"clip": nets["dino"]}, "holds a 'dinov2' model"),
        ("clip_score", {"clip": None}, "set tracking.backends.clip=PATH"),
        ("vbench_dynamic_degree", {"raft": str(tmp_path / "two")}, "2 .pth / .pt files"),
        ("vbench_dynamic_degree", {"raft": str(tmp_path / "junk.pth")}, "could not be read"),
        ("flow_smoothness", {"raft": str(tmp_path / "other.pth")}, "not the state dict"),
        ("flow_magnitude", {"raft": nets["dino"]}, "0 .pth / .pt files"),
    ]
    for name, backends, reason in cases:
        res = run(v, [name], backends)
        assert name not in res.values and reason in res.unavailable[name], (name, backends)


def test_weights_that_miss_parameters_are_refused(nets, tmp_path):
    import shutil

    bad = tmp_path / "dino-holes"
    shutil.copytree(nets["dino"], bad)
    from safetensors.torch import load_file, save_file

    state = load_file(bad / "model.safetensors")
    state.pop(next(k for k in state if "encoder.layer.0" in k))
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(Unavailable, match="lacks 1 of the dino network's weights"):
        load_hf("dino", str(bad), "cpu")
    big = tmp_path / "raft_large.pth"
    from torchvision.models.optical_flow import raft_large

    state = raft_large(weights=None).state_dict()
    state.pop("update_block.flow_head.conv2.bias")
    torch.save(state, big)
    with pytest.raises(Unavailable, match="not the state dict"):
        load_raft(str(big), "cpu")


def world_run(tmp_path, backends, extra=()):
    opts = [f"+tracking.options.{k}={v}" for k, v in FAST.items()]
    args = ["run", "model=world", "video.latent_frames=8", f"run_root={tmp_path}",
            "progress=false", "tracking.metrics=real", *opts, *extra,
            *[f"tracking.backends.{k}={v}" for k, v in backends.items()]]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "rollouts").iterdir()
    client = MlflowClient(resolve_uri(None, tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    return run_dir, client, run


def test_world_run_logs_every_real_measure_as_a_curve(nets, tmp_path):
    b = {k: nets[k] for k in ("dino", "clip", "raft")}
    run_dir, client, run = world_run(tmp_path, b)
    data = json.loads((run_dir / "metrics.json").read_text())
    assert not set(REAL) & set(data["unavailable"])
    for name in CURVES:
        hist = client.get_metric_history(run.info.run_id, name)
        assert len(hist) >= 2 and len({m.step for m in hist}) == len(hist), name
    for name in set(REAL) - set(CURVES):
        assert name in run.data.metrics, name
    assert run.info.status == "FINISHED"
    out = tmp_path / "report"  # the report shows them like the world measures
    assert main(["report", "experiment=default", f"run_root={tmp_path}", f"out={out}"]) == 0
    md = (out / "report.md").read_text()
    for title in ("subject consistency ↑", "background consistency ↑", "CLIP score ↑",
                  "CLIP drift ↓", "smoothness (RAFT stand-in) ↑", "dynamic pairs ↑",
                  "vbench_dynamic_degree ↑"):
        assert title in md, title
    assert (out / "figures" / "clip_score.png").is_file()


def test_world_run_without_weights_finishes_and_says_what_is_unavailable(tmp_path, caplog):
    missing = {"dino": str(tmp_path / "no-dino"), "clip": "null", "raft": str(tmp_path / "x")}
    with caplog.at_level(logging.WARNING, logger="rollbench.tracking"):
        run_dir, _, run = world_run(tmp_path, missing)
    assert run.info.status == "FINISHED"
    data = json.loads((run_dir / "metrics.json").read_text())
    assert set(REAL) <= set(data["unavailable"])
    assert "does not exist" in data["unavailable"]["subject_consistency"]
    assert "set tracking.backends.clip=PATH" in data["unavailable"]["clip_score"]
    for name in REAL:
        assert name not in run.data.metrics
        assert run.data.tags[f"unavailable.{name}"] == data["unavailable"][name][:1000]
    assert "motion" in run.data.metrics  # the measures that need no network are still there
    lines = [r.getMessage() for r in caplog.records if r.name == "rollbench.tracking"]
    assert len(lines) == 1 and all(name in lines[0] for name in REAL)
