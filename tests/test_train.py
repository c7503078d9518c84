"""The shared training loop: exact resume, atomic checkpoints, non-finite stops, several processes."""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kldiv.errors import NonFiniteError
from kldiv.train import RunConfig, StepBatchSampler, load_checkpoint, parse_config, save_checkpoint
from recipe_runner import load_recipe

HERE = Path(__file__).parent
TINY = ["--image-size", "8", "--latent-dim", "4", "--width", "4", "--batch-size", "16", "--log-every", "1"]


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Cfg(RunConfig):
    sigma: float = 0.3
    inference: str = dataclasses.field(default="a", metadata={"help": "x", "choices": ("a", "b")})


def test_parse_config_applies_presets_below_explicit_options():
    presets = {"digits": {"sigma": 0.1, "steps": 7}}
    cfg = parse_config(_Cfg, ["--steps", "3", "--no-compile", "--inference", "b"], presets)
    assert (cfg.steps, cfg.sigma, cfg.compile, cfg.inference) == (3, 0.1, False, "b")
    assert parse_config(_Cfg, ["--data", "mnist"], presets).sigma == 0.3
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--inference", "c"])


def test_step_batches_are_a_function_of_the_step_and_shard_across_ranks():
    one = list(StepBatchSampler(20, 4, seed=1, start=0, stop=10))
    later = list(StepBatchSampler(20, 4, seed=1, start=6, stop=10))
    assert later == one[6:]
    two = [list(StepBatchSampler(20, 2, seed=1, start=0, stop=10, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*two)] == one
    epoch0 = sorted(i for b in one[:5] for i in b)
    assert epoch0 == list(range(20))


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------
def test_checkpoint_round_trip_with_weights_only(tmp_path):
    state = {"networks": {"g": {"w": torch.randn(3)}}, "step": 4, "config": {"a": "b"}, "rng": [1, 2]}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["step"] == 4 and torch.equal(back["networks"]["g"]["w"], state["networks"]["g"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="without --resume"):
        load_checkpoint(tmp_path / "missing.pt")


_WRITER = """
import sys, torch
from kldiv.train import save_checkpoint
big = {"payload": torch.randn(40_000_000), "step": 2}
print("ready", flush=True)
while True:
    save_checkpoint(sys.argv[1], big)
"""


def test_sigkill_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "payload": torch.zeros(3)})
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 120
    while not any(p.suffix == ".tmp" and p.stat().st_size > 1_000_000 for p in tmp_path.iterdir()):
        assert time.time() < deadline, "the writer never started a temporary file"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-write: the temporary file is half written
    proc.wait()
    state = load_checkpoint(path)
    assert state["step"] in (1, 2)
    if state["step"] == 2:
        assert state["payload"].numel() == 40_000_000
    assert any(p.suffix == ".tmp" for p in tmp_path.iterdir())  # the killed writer's orphan...
    save_checkpoint(path, {"step": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # ...is swept by the next write


# ----------------------------------------------------------------------------------------
# Through a recipe
# ----------------------------------------------------------------------------------------
def _params(run):
    return {(name, k): v.detach().clone() for name, m in run.networks.items() for k, v in m.state_dict().items()}


def test_resume_is_exact(tmp_path):
    latent_ebm = load_recipe("latent_ebm")
    straight = latent_ebm.main([*TINY, "--steps", "6", "--out", str(tmp_path / "a")])
    latent_ebm.main([*TINY, "--steps", "3", "--out", str(tmp_path / "b")])
    resumed = latent_ebm.main([*TINY, "--steps", "6", "--out", str(tmp_path / "b"), "--resume"])
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_non_finite_loss_stops_before_updating_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    latent_ebm = load_recipe("latent_ebm")
    out = tmp_path / "run"
    latent_ebm.main([*TINY, "--steps", "2", "--out", str(out)])
    before = load_checkpoint(out / "checkpoint.pt")
    # a learning rate that blows the energy up on the first update of the resumed run
    with pytest.raises(NonFiniteError, match=r"not finite(.|\n)*player '.*' in step \d+ of 40: the run stops before updating(.|\n)*--resume"):
        latent_ebm.main([*TINY, "--steps", "40", "--out", str(out), "--resume", "--lr-ebm", "1e30",
                         "--lr-gen", "1e30", "--lr-enc", "1e30", "--checkpoint-every", "1000"])
    after = load_checkpoint(out / "checkpoint.pt")
    assert after["step"] == before["step"] == 2
    for k, v in before["networks"]["energy"].items():
        assert torch.equal(v, after["networks"]["energy"][k])


def test_two_processes_match_one_process_on_the_doubled_batch(tmp_path):
    script = HERE / "scripts" / "ddp_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "two"), "8"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "16"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["networks"]
    b = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["networks"]
    for net in a:
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)  # the script's initialisation: the parameters did move
    assert not torch.allclose(torch.nn.Linear(6, 2).weight, a["encoder"]["lin.weight"])
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]  # only rank 0 writes


def test_ema_is_the_moving_average_of_the_weights_and_resumes_exactly(tmp_path):
    vae = load_recipe("vae")
    straight = vae.main([*TINY, "--steps", "4", "--ema", "0.5", "--out", str(tmp_path / "a")])
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert state["ema_updates"] == {"generator": 4, "encoder": 4}
    # decay 0.5: the first update copies the weights, then e <- 0.5 e + 0.5 w; it lags the last step
    assert state["ema"]["encoder"].keys() == state["networks"]["encoder"].keys()
    assert any(not torch.equal(state["ema"]["encoder"][k], v) for k, v in state["networks"]["encoder"].items())
    vae.main([*TINY, "--steps", "2", "--ema", "0.5", "--out", str(tmp_path / "b")])
    resumed = vae.main([*TINY, "--steps", "4", "--ema", "0.5", "--out", str(tmp_path / "b"), "--resume"])
    for k in ("generator", "encoder"):
        a, b = straight.ema[k].module.state_dict(), resumed.ema[k].module.state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a), k
    vae.main([*TINY, "--steps", "2", "--out", str(tmp_path / "c")])
    with pytest.raises(ValueError, match="without --ema"):
        vae.main([*TINY, "--steps", "3", "--ema", "0.9", "--out", str(tmp_path / "c"), "--resume"])
    with pytest.raises(SystemExit):
        vae.main([*TINY, "--steps", "1", "--ema", "1.5", "--out", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()


def test_without_a_terminal_a_run_prints_progress_lines_and_what_it_wrote(tmp_path, capsys):
    load_recipe("vae").main([*TINY, "--steps", "4", "--log-every", "2", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("vae ")]
    assert [line.split(" | ")[0] for line in lines] == ["vae 2/4", "vae 4/4"]
    assert all("steps/s" in line and "left" in line and "| vae " in line for line in lines)
    assert "wrote checkpoint.pt, config.json, metrics.jsonl" in out and f"python -m kldiv.evaluate {tmp_path / 'run'}" in out


def test_a_run_records_its_configuration_its_terms_and_a_clock_that_survives_resume(tmp_path):
    out = tmp_path / "run"
    latent_ebm = load_recipe("latent_ebm")
    latent_ebm.main([*TINY, "--steps", "2", "--out", str(out)])
    latent_ebm.main([*TINY, "--steps", "4", "--out", str(out), "--resume"])
    record = json.loads((out / "config.json").read_text())
    assert record["recipe"] == "latent_ebm" and record["config"]["steps"] == 4 and record["config"]["resume"]
    assert record["torch"] == torch.__version__ and "kldiv" in record
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    times = [r["time"] for r in rows]
    assert times == sorted(times)  # the clock continues across the resume
    assert all(r["step_time"] > 0 for r in rows)
    # every summand explain() lists for the EBM, and each player's learning rate
    assert {"ebm/E_q[f(x, z)]", "ebm/E_p[f(x, z)]", "ebm/lr", "generator/lr"} <= set(rows[-1])


def test_help_shows_the_values_a_preset_gives(capsys):
    with pytest.raises(SystemExit):
        load_recipe("latent_ebm").main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "dimension of z (default: 100; with --data digits: 16; >= 1)" in text


def test_config_files_set_options_and_the_command_line_overrides_them(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('steps = 2\nwidth = 8\nlatent_dim = 4\nbatch_size = 16\nimage_size = 8\n')
    out = tmp_path / "run"
    load_recipe("vae").main(["--config", str(tmp_path / "c.toml"), "--width", "4", "--out", str(out)])
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["steps"], cfg["width"], cfg["latent_dim"]) == (2, 4, 4)
    # a run's own config.json reproduces it
    again = tmp_path / "again"
    load_recipe("vae").main(["--config", str(out / "config.json"), "--out", str(again)])
    assert json.loads((again / "config.json").read_text())["config"]["width"] == 4
    for text, words in (("stepz = 2\n", "does not have: ['stepz']"), ("steps = 'many'\n", "steps must be int"),
                        ("steps = \n", "is not valid TOML")):
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(SystemExit):
            load_recipe("vae").main(["--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "bad")])
        assert words in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_gets_the_same_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    load_recipe("vae").main([*TINY, "--steps", "3", "--tensorboard", "--out", str(out)])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"vae", "vae/lr", "time"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("vae")] == [1, 2, 3]


def test_keep_holds_the_last_checkpoints_by_step(tmp_path):
    out = tmp_path / "run"
    load_recipe("vae").main([*TINY, "--steps", "5", "--checkpoint-every", "1", "--keep", "2", "--out", str(out)])
    names = sorted(f.name for f in out.glob("checkpoint*.pt"))
    assert names == ["checkpoint-00000004.pt", "checkpoint-00000005.pt", "checkpoint.pt"]
    assert load_checkpoint(out / "checkpoint-00000004.pt")["step"] == 4
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 5


def test_the_moving_average_of_a_spectrally_normalised_energy_scores_like_the_network(tmp_path):
    """Averaged power-iteration vectors are no singular vectors: the average copies them instead."""
    from kldiv.evaluate import load_run, scorer

    out = tmp_path / "run"
    load_recipe("latent_ebm").main([*TINY, "--steps", "30", "--ema", "0.9", "--out", str(out)])
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    scores = {}
    for ema in (False, True):
        state, nets, _ = load_run(out, ema=ema)
        scores[ema] = scorer(nets, state["config"])[0](x)
        sd = state["ema" if ema else "networks"]["energy"]
        u = [v for k, v in sd.items() if k.endswith("_u")]
        assert u and all(abs(float(t.norm()) - 1) < 1e-3 for t in u)  # unit vectors, as power iteration keeps them
    assert scores[True].std() > 0.1 * scores[False].std()  # not the constant of a blown-up average
    assert torch.corrcoef(torch.stack([scores[True], scores[False]]))[0, 1] > 0.5


def test_a_compiled_spectrally_normalised_energy_runs_a_round_as_the_eager_one():
    """Two passes, then two backward passes through one graph (retain_graph), as a round does:
    the compiled energy gives the eager one's values, gradients and power-iteration vectors."""
    import copy

    from kldiv.nn import MLPEnergy
    from kldiv.train import compile_network

    import torch._functorch.config as functorch_config

    flag = functorch_config.donated_buffer
    torch.manual_seed(0)
    eager = MLPEnergy(6, latent_dim=3, hidden=(16,), spectral_norm=True)
    compiled = compile_network(copy.deepcopy(eager))
    x, z = torch.randn(8, 6), torch.randn(8, 3)
    outs, grads = [], []
    for f in (eager, compiled):
        a, b = f(x, z).mean(), f(x + 1, z).mean()
        (a - b).backward(retain_graph=True)
        (a + b).backward()
        outs.append(torch.stack([a, b]).detach())
        grads.append([p.grad.clone() for p in f.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)
    torch.testing.assert_close(eager.state_dict(), compiled._net.state_dict())  # the same u, v after the round
    assert functorch_config.donated_buffer == flag  # compiling changed no global setting
    compiled.eval()  # evaluation: no power iteration, as in eager mode
    before = {k: v.clone() for k, v in compiled._net.state_dict().items()}
    compiled(x, z)
    torch.testing.assert_close(before, compiled._net.state_dict())


def test_compile_mode_reaches_torch_compile_and_an_unknown_one_is_refused(tmp_path, monkeypatch):
    from kldiv.train import compile_network

    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: seen.append(kw) or net)
    latent_ebm = load_recipe("latent_ebm")
    latent_ebm.main([*TINY, "--steps", "1", "--compile", "--compile-mode", "max-autotune", "--out", str(tmp_path)])
    assert seen and all(kw == {"mode": "max-autotune"} for kw in seen)
    compile_network(torch.nn.Linear(2, 1))
    assert seen[-1] == {"mode": None}  # torch's own default
    with pytest.raises(ValueError, match="mode must be one of default, reduce-overhead"):
        compile_network(torch.nn.Linear(2, 1), mode="fast")


# ----------------------------------------------------------------------------------------
# --channels-last
# ----------------------------------------------------------------------------------------
def _conv_weights(nets):
    return {f"{k}.{n}": p for k, m in nets.items() for n, p in m.named_parameters() if p.dim() == 4}


def test_channels_last_trains_a_recipe_with_channels_last_networks_and_activations(tmp_path):
    """On the digits preset's networks: finite losses, every convolution weight and every
    convolution's output (the generator's images included) in the channels-last format."""
    latent_ebm = load_recipe("latent_ebm")
    outputs = []  # (layer, output is channels-last) for every 4-D convolution output of the last step

    def hook(module, args, out):
        if out.dim() == 4:
            outputs.append((module, out.is_contiguous(memory_format=torch.channels_last)))

    run = latent_ebm.main(["--batch-size", "16", "--steps", "2", "--log-every", "1", "--sample-every", "1000",
                           "--channels-last", "--out", str(tmp_path / "run")])
    assert run.cfg.channels_last and (run.cfg.image_size, run.cfg.width) == (16, 32)  # the digits preset
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(isinstance(r[p], float) and torch.isfinite(torch.tensor(r[p])) for r in rows for p in latent_ebm.PLAYERS)
    weights = _conv_weights(run.networks)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights.values())
    assert any(not w.is_contiguous() for w in weights.values())  # NHWC indeed, not the 1-channel ambiguity
    # the moments of Adam follow the parameters
    for o in run.optimizers.values():
        for p, st in o.state.items():
            assert st["exp_avg"].stride() == p.stride()
    # a further round: the batch, the generator's samples and every convolution's output are channels-last
    handles = [m.register_forward_hook(hook) for net in run.networks.values() for m in net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        x = next(iter(run.batches(run.dataset())), None)
        assert x is None  # the run is over: no batch left
        x = torch.rand(16, 1, 16, 16).to(memory_format=torch.channels_last) * 2 - 1
        run.estimator.round(x).backward("ebm")
        g = run.networks["generator"](torch.randn(4, 16))
    finally:
        for h in handles:
            h.remove()
    assert g.is_contiguous(memory_format=torch.channels_last)
    assert outputs and all(ok for _, ok in outputs), [type(m).__name__ for m, ok in outputs if not ok]


def test_channels_last_batches_are_channels_last(tmp_path):
    vae = load_recipe("vae")
    from kldiv.train import Run

    cfg = vae.Config(batch_size=8, steps=2, image_size=8, channels_last=True, out=str(tmp_path / "run"))
    data = torch.rand(32, 3, 8, 8)
    batches = list(Run(cfg, name="vae").batches(data))
    assert len(batches) == 2 and all(b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
                                      for b in batches)
    flat = list(Run(cfg, name="vae").batches(torch.rand(32, 6)))  # not images: left as they are
    assert all(b.is_contiguous() for b in flat)


def test_channels_last_gives_the_eager_losses_and_gradients(tmp_path):
    """One simultaneous step from the same seed: the same losses, terms and gradients."""
    latent_ebm = load_recipe("latent_ebm")
    args = ["--image-size", "16", "--latent-dim", "4", "--width", "8", "--batch-size", "16", "--log-every", "1",
            "--steps", "1", "--schedule", "simultaneous"]
    runs = [latent_ebm.main([*args, *extra, "--out", str(tmp_path / str(i))])
            for i, extra in enumerate(([], ["--channels-last"]))]
    eager, nhwc = runs
    assert eager.metrics.keys() == nhwc.metrics.keys() and "ebm/E_q[f(x, z)]" in eager.metrics
    for k in eager.metrics:
        assert nhwc.metrics[k] == pytest.approx(eager.metrics[k], rel=1e-5, abs=1e-6), k
    assert any(not w.is_contiguous() for w in _conv_weights(nhwc.networks).values())
    for (name, a), b in zip(_conv_weights(eager.networks).items(), _conv_weights(nhwc.networks).values()):
        assert a.is_contiguous()
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    for k in eager.networks:
        for (name, a), b in zip(eager.networks[k].named_parameters(), nhwc.networks[k].parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=f"{k}.{name}")


@pytest.mark.parametrize("first", [["--channels-last"], []], ids=["nhwc-then-nchw", "nchw-then-nhwc"])
def test_checkpoints_resume_across_channels_last(tmp_path, first):
    latent_ebm = load_recipe("latent_ebm")
    then = [] if first else ["--channels-last"]
    out = tmp_path / "run"
    latent_ebm.main([*TINY, "--width", "8", "--steps", "2", "--out", str(out), *first])
    saved = load_checkpoint(out / "checkpoint.pt")
    # resumed with the other format: the same weights and moments, in this run's format
    loaded = latent_ebm.main([*TINY, "--width", "8", "--steps", "2", "--out", str(out), "--resume", *then])
    assert loaded.step == 2
    for k, net in loaded.networks.items():
        for name, v in net.state_dict().items():
            assert torch.equal(v, saved["networks"][k][name]), (k, name)
    fmt = torch.channels_last if then else torch.contiguous_format
    for o in loaded.optimizers.values():
        for p, st in o.state.items():
            assert p.dim() != 4 or p.is_contiguous(memory_format=fmt)
            assert st["exp_avg"].stride() == p.stride()
            assert st["exp_avg_sq"].stride() == p.stride()
    resumed = latent_ebm.main([*TINY, "--width", "8", "--steps", "4", "--out", str(out), "--resume", *then])
    straight = latent_ebm.main([*TINY, "--width", "8", "--steps", "4", "--out", str(tmp_path / "straight")])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for p in latent_ebm.PLAYERS:  # what an uninterrupted run in one format computes, to within rounding
        assert resumed.metrics[p] == pytest.approx(straight.metrics[p], rel=1e-4)


# ----------------------------------------------------------------------------------------
# --amp fp16: a loss scale per player
# ----------------------------------------------------------------------------------------
def _scaler_from(init_scale):
    import functools

    return functools.partial(torch.amp.GradScaler, init_scale=init_scale)


def test_fp16_scales_each_players_loss_and_resumes_its_scale_exactly(tmp_path):
    latent_ebm = load_recipe("latent_ebm")
    fp16 = [*TINY, "--amp", "fp16"]
    straight = latent_ebm.main([*fp16, "--steps", "4", "--out", str(tmp_path / "a")])
    assert set(straight.scalers) == {"ebm", "encoder", "generator"}
    latent_ebm.main([*fp16, "--steps", "2", "--out", str(tmp_path / "b")])
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert set(state["scalers"]) == {"ebm", "encoder", "generator"}
    resumed = latent_ebm.main([*fp16, "--steps", "4", "--out", str(tmp_path / "b"), "--resume"])
    a, b = _params(straight), _params(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert {k: s.get_scale() for k, s in straight.scalers.items()} == {k: s.get_scale() for k, s in resumed.scalers.items()}
    row = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ebm/loss_scale", "encoder/loss_scale", "generator/loss_scale"} <= set(row)


def test_fp16_skips_a_step_whose_gradient_overflows_and_halves_the_scale(tmp_path, monkeypatch):
    latent_ebm = load_recipe("latent_ebm")

    def weights(run):
        return {(name, k): v.detach().clone() for name, m in run.networks.items() for k, v in m.named_parameters()}

    before = weights(latent_ebm.main([*TINY, "--steps", "0", "--out", str(tmp_path / "init")]))
    monkeypatch.setattr(torch.amp, "GradScaler", _scaler_from(2.0**100))  # every float16 gradient overflows
    run = latent_ebm.main([*TINY, "--amp", "fp16", "--steps", "2", "--out", str(tmp_path / "run")])
    assert {k: s.get_scale() for k, s in run.scalers.items()} == dict.fromkeys(run.scalers, 2.0**98)
    after = weights(run)
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert torch.equal(v, before[k]), k  # both steps skipped, weight decay included


def test_fp16_stops_when_the_gradient_is_not_finite_even_unscaled(tmp_path, monkeypatch):
    import kldiv.nn

    forward = kldiv.nn.EnergyXZ.forward

    def nan_gradient(self, x, z):  # the value as before, a NaN gradient: d sqrt(u - u) = 0 * inf
        f = forward(self, x, z)
        return f + torch.sqrt(f - f)

    monkeypatch.setattr(kldiv.nn.EnergyXZ, "forward", nan_gradient)
    monkeypatch.setattr(torch.amp, "GradScaler", _scaler_from(4.0))
    latent_ebm = load_recipe("latent_ebm")
    with pytest.raises(NonFiniteError, match=r"at a loss scale of 1: it overflows even unscaled(.|\n)*player 'ebm' in step 3"):
        latent_ebm.main([*TINY, "--amp", "fp16", "--steps", "5", "--out", str(tmp_path / "run")])
