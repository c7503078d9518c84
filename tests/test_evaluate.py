"""python -m kldiv.evaluate on a finished (tiny) run, and the anomaly benchmark end to end."""

import json
from pathlib import Path

import pytest
import torch

from kldiv.evaluate import main as evaluate_main
from recipe_runner import REPO, load_recipe, load_script

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = ["--image-size", "8", "--latent-dim", "4", "--width", "4", "--batch-size", "16", "--steps", "2"]


@pytest.mark.parametrize(("recipe", "score"), [("latent_ebm", "-f(x, mu_q(x))"), ("triangle", "-f(x)"),
                                               ("latent_prior_ebm", "-log p(x, mu_q(x))")])
def test_evaluate_a_run_from_its_checkpoint(recipe, score, tmp_path):
    out = tmp_path / recipe
    load_recipe(recipe).main([*TINY, "--out", str(out)])
    report = evaluate_main([str(out), "--samples", "100", "--test-images", "100", "--data-root", str(SHARED)])
    assert report == json.loads((out / "evaluation.json").read_text())
    assert report["step"] == 2 and report["data"] == "digits" and report["test_images"] == 100
    assert 0 < report["reconstruction_rmse"] <= 2
    assert report["mnist_frechet_distance"] > 0
    assert report["ood_score"] == score
    assert {"uniform noise", "constant"} <= set(report["ood_auroc"])
    assert all(0 <= a <= 1 for a in report["ood_auroc"].values())
    if SHARED.exists():
        assert {"mnist", "fashion-mnist"} <= set(report["ood_auroc"])
    else:
        assert "ood_skipped" in report
    assert (out / "energy_histograms.png").stat().st_size > 1000
    if recipe == "latent_prior_ebm":  # beside it, at the end of Pang et al.'s posterior chain from mu_q(x)
        assert report["ood_score_posterior"] == "-log p(x, z_20), posterior Langevin from mu_q(x)"
        assert set(report["ood_auroc_posterior"]) == set(report["ood_auroc"])
    else:
        assert "ood_score_posterior" not in report


def test_evaluate_scores_the_mcmc_teaching_ebm_by_its_density_with_the_reference(tmp_path):
    out = tmp_path / "mcmc"
    load_recipe("mcmc_teaching").main([*TINY, "--langevin-steps", "2", "--out", str(out)])
    report = evaluate_main([str(out), "--samples", "100", "--test-images", "100", "--data-root", str(SHARED)])
    assert report["ood_score"] == "-f(x) - log N(x; 0, 0.016²I)"
    assert report["ood_score_without_reference"] == "-f(x)"
    assert set(report["ood_auroc_without_reference"]) == set(report["ood_auroc"])
    # the reference's |x|^2 / 2s^2 (about 1e5 an image here) outweighs the barely trained f
    assert report["ood_auroc"] != report["ood_auroc_without_reference"]


def test_evaluate_scores_a_vae_by_its_negative_elbo_and_a_held_out_class(tmp_path):
    out = tmp_path / "vae"
    load_recipe("vae").main([*TINY, "--hold-out", "7", "--ema", "0.5", "--out", str(out)])
    report = evaluate_main([str(out), "--samples", "100", "--test-images", "200", "--data-root", str(SHARED)])
    assert report["ood_score"] == "-ELBO(x)" and report["held_out"] == 7
    assert 0 < report["anomaly_auprc"] <= 1
    assert report["weights"] == "moving average (decay 0.5)"
    assert report["test_images"] < 200  # the normal test images of the 200 drawn; the rest are anomalies
    last = evaluate_main([str(out), "--samples", "100", "--test-images", "200", "--no-ema"])
    assert last["weights"] == "last step" and last["reconstruction_rmse"] != report["reconstruction_rmse"]


@pytest.mark.skipif(not (SHARED / "MNIST").exists(), reason="MNIST is not at ../shared/data")
def test_anomaly_benchmark_trains_by_the_recipes_and_writes_its_table(tmp_path):
    module = load_script(REPO / "benchmarks" / "anomaly_mnist.py")
    common = ["--digits", "4", "--epochs", "2", "--average-last", "2", "--epoch-steps", "3", "--width", "4",
              "--latent-dim", "4", "--test-images", "300", "--ema", "0.5", "--out", str(tmp_path),
              "--data-root", str(SHARED)]
    module.main([*common, "--models", "latent-ebm", "latent-prior-ebm"])
    table = (tmp_path / "table.md").read_text()
    assert "| 0.337 | 0.723 | 0.630 | 0.949 |" in table
    assert "| 4 | 0.351 (0.097) | 0.200 (0.050) |" in table  # the digit's share of the test set, of MNIST
    assert "python benchmarks/anomaly_mnist.py --epochs 2 --average-last 2 --epoch-steps 3 --width 4" in table
    assert "latent EBM (2020), EMA (kldiv)" in table and "latent-space EBM prior (Pang 2020) (kldiv)" in table
    assert "latent-space EBM prior (Pang 2020), posterior chain (kldiv)" in table
    assert "latent EBM (2020), posterior chain" not in table  # only the EBM prior has the chain's score
    result = json.loads((tmp_path / "digit4.json").read_text())
    assert set(result) == {"latent-ebm", "latent-prior-ebm"}
    for r in result.values():
        assert len(r["auprc_per_epoch"]) == len(r["auprc_ema_per_epoch"]) == 2 and 0 < r["auprc"] <= 1
        assert len(r["auprc_natural_per_epoch"]) == len(r["auprc_ema_natural_per_epoch"]) == 2
    assert len(result["latent-prior-ebm"]["auprc_posterior_per_epoch"]) == 2
    # which term of the EBM prior's score ranks the anomalies: each alone, at the kept checkpoints
    terms = module.main([*common, "--terms"])
    assert "`-log p(x, mu_q(x))`" in terms and "`-[log N(x; g(z), σ²I)]`" in terms
    assert "`-[f(z) + log N(z; 0, I)]`" in terms and terms.count("\n| 4 | 0.630 |") == 1
    # each epoch's scores are kept, and its checkpoint: scoring them again gives the same AUPRCs
    where = tmp_path / "digit4" / "latent-ebm"
    assert len(list(where.glob("scores-epoch*.pt"))) == len(list(where.glob("checkpoint-*.pt"))) == 2
    module.main([*common, "--models", "latent-ebm", "--rescore"])
    again = json.loads((tmp_path / "digit4.json").read_text())["latent-ebm"]
    for key in ("auprc", "auprc_natural", "auprc_ema", "auprc_ema_natural"):
        assert again[f"{key}_per_epoch"] == pytest.approx(result["latent-ebm"][f"{key}_per_epoch"], abs=1e-6)
    # the recipe ran to epoch 1, then resumed for epoch 2: one run, six steps
    state = torch.load(tmp_path / "digit4" / "latent-ebm" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["config"]["hold_out"] == 4
    # a later invocation with the same settings adds its model; one with other settings keeps apart
    module.main([*common, "--models", "vae"])
    assert set(json.loads((tmp_path / "digit4.json").read_text())) == {"latent-ebm", "latent-prior-ebm", "vae"}
    assert "| VAE (kldiv) |" in (tmp_path / "table.md").read_text()
    module.main([*common, "--table-only", "--epochs", "3"])
    assert "| 4 |" not in (tmp_path / "table.md").read_text()
    with pytest.raises(SystemExit):  # results of other settings are never overwritten
        module.main([*common, "--models", "vae", "--epochs", "3"])
    assert set(json.loads((tmp_path / "digit4.json").read_text())) == {"latent-ebm", "latent-prior-ebm", "vae"}
    # how common the held-out digit is: chance and the worst AUPRC, in this test set and at its share of MNIST
    assert "| 4 | 0.351 | 0.200 | 0.097 | 0.050 | 0.337 | 0.723 |" in module.main([*common, "--shares"])


@pytest.mark.skipif(not (SHARED / "MNIST").exists(), reason="MNIST is not at ../shared/data")
def test_scoreboard_trains_every_model_by_its_recipe_and_judges_the_claims(tmp_path, monkeypatch):
    module = load_script(REPO / "benchmarks" / "scoreboard.py")
    common = ["--steps", "2", "--width", "4", "--latent-dim", "4", "--test-images", "300", "--samples", "100",
              "--models", "vae", "latent-ebm", "mcmc-teaching", "--mcmc-args", "--langevin-steps 2",
              "--time-steps", "3", "--out", str(tmp_path), "--data-root", str(SHARED),
              "--recipe-args", "--channels-last --keep 1"]
    rows = module.main(common)
    assert set(rows) == {"vae", "latent-ebm", "mcmc-teaching"}
    for m in rows:  # --recipe-args reaches every recipe
        config = json.loads((tmp_path / m / "config.json").read_text())["config"]
        assert config["channels_last"] and config["keep"] == 1, m
    assert all(0 < r["auprc"] <= 1 and r["fd"] > 0 for r in rows.values())
    # on MNIST the report also weighs the held-out digit to its share of MNIST: rarer anomalies, lower precision
    report = json.loads((tmp_path / "vae" / "evaluation.json").read_text())
    assert 0 < report["anomaly_auprc_at_mnist_share"] < report["anomaly_auprc"]
    assert rows["vae"]["score"] == "-ELBO(x)" and rows["mcmc-teaching"]["fd_revised"] > 0
    table = (tmp_path / "table.md").read_text()
    assert "| VAE |" in table and "Joint training (latent EBM (2020))" in table
    assert "revised samples beat its VAE's" in table
    assert (tmp_path / "scoreboard.png").stat().st_size > 1000
    assert all(r["steps_per_second"] > 0 for r in rows.values())  # from the side-by-side timing runs
    # re-scored from the checkpoints, with an Inception FID column (a stand-in network here)
    from kldiv import metrics

    monkeypatch.setattr(metrics, "inception_fid", lambda a, b, *args, **kw: 12.5)
    again = module.main([*common, "--evaluate-only", "--fid", "--time-steps", "0"])
    assert again["vae"]["fd"] == rows["vae"]["fd"] and again["mcmc-teaching"]["fid_revised"] == 12.5
    assert "| FID ↓ | FID revised ↓ |" in (tmp_path / "table.md").read_text()


def test_training_curves_of_a_run(tmp_path):
    from kldiv.plot import main as plot_main

    out = tmp_path / "run"
    load_recipe("latent_ebm").main([*TINY, "--steps", "4", "--log-every", "1", "--out", str(out)])
    path = plot_main([str(out), "--terms"])
    assert path == out / "curves.png" and path.stat().st_size > 5000
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot_main([str(tmp_path)])


@pytest.mark.parametrize(("script", "argv", "words"), [
    ("anomaly_mnist", ["--digits", "1", "11"], "argument --digits: must be between 0 and 9, got 11"),
    ("anomaly_mnist", ["--test-images", "-3"], "argument --test-images: must be at least 0, got -3"),
    ("anomaly_mnist", ["--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
    ("scoreboard", ["--hold-out", "10"], "argument --hold-out: must be between 0 and 9, got 10"),
    ("scoreboard", ["--samples", "1"], "argument --samples: must be at least 2, got 1"),
    # a recipe's own flags, refused before the first model trains, naming the recipe
    ("scoreboard", ["--models", "vae", "latent-ebm", "--recipe-args=--bogus"],
     "recipes/vae.py refuses its options (vae): unrecognized arguments: --bogus"),
    ("scoreboard", ["--models", "mcmc-teaching", "--mcmc-args=--langevin-steps x"],
     "recipes/mcmc_teaching.py refuses its options (mcmc-teaching): argument --langevin-steps: invalid int value"),
    ("anomaly_mnist", ["--models", "vae", "latent-ebm", "--recipe-args=--energy-width 64"],
     "recipes/vae.py refuses its options (vae): unrecognized arguments: --energy-width 64"),
])
def test_the_benchmarks_refuse_bad_flags_by_name_and_write_nothing(script, argv, words, tmp_path, capsys):
    module = load_script(REPO / "benchmarks" / f"{script}.py")
    with pytest.raises(SystemExit) as info:
        module.main([*argv, "--out", str(tmp_path / "out")])
    assert info.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_terms_of_a_run_that_is_not_there_are_refused(tmp_path):
    module = load_script(REPO / "benchmarks" / "anomaly_mnist.py")
    with pytest.raises(SystemExit, match="holds no EBM prior results run with these settings"):
        module.main(["--terms", "--digits", "1", "--out", str(tmp_path), "--data-root", str(SHARED)])


def test_evaluate_refuses_what_it_cannot_score_with_one_line_and_no_traceback(tmp_path, capsys):
    out = tmp_path / "vae"
    on_mnist = (SHARED / "MNIST").exists()  # a run on MNIST needs its data root again to be scored
    load_recipe("vae").main([*TINY, "--out", str(out), *(["--data", "mnist", "--data-root", str(SHARED)]
                                                        if on_mnist else [])])
    (tmp_path / "notes.json").write_text("{}")
    cases = [
        ([str(tmp_path / "nothing")], 2, "neither a checkpoint file nor a run's folder holding checkpoint.pt"),
        ([str(out), "--samples", "1"], 2, "--samples must be at least 2"),
        ([str(out), "--test-images", "0"], 2, "--test-images must be at least 1"),
        ([str(out), "--device", "gpu"], 2, "--device 'gpu' is not a device"),
        ([str(tmp_path / "notes.json")], 1, "cannot be read"),
    ]
    if on_mnist:
        cases.append(([str(out), "--data-root", str(tmp_path / "no-data")], 1, "MNIST was not found under"))
    if not torch.cuda.is_available():
        cases.append(([str(out), "--device", "cuda"], 2, "asks for a GPU, and torch sees none here"))
    for argv, code, words in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            evaluate_main(argv)
        err = capsys.readouterr().err
        assert info.value.code == code and words in err and "Traceback" not in err, (argv, err)
    assert not (out / "evaluation.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "MNIST").exists(), reason="MNIST is not at ../shared/data")
def test_the_gpu_script_runs_end_to_end_small_on_a_cpu(tmp_path):
    import os
    import subprocess

    env = {**os.environ, "SMALL": "1", "DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(SHARED), str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "channels-last+fp16" in (tmp_path / "speed.txt").read_text()
    for amp in ("bf16", "fp16"):
        report = json.loads((tmp_path / f"latent_ebm_{amp}" / "evaluation.json").read_text())
        assert 0 < report["anomaly_auprc"] <= 1, amp
    bad = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "nothing")], cwd=REPO,
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "MNIST/raw is missing" in bad.stderr


def test_the_speed_benchmark_leaves_out_a_variant_that_fails_in_its_warm_up(monkeypatch, capsys):
    module = load_script(REPO / "benchmarks" / "recipe_speed.py")

    def broken(net, **kw):
        def run(*args, **kwargs):
            raise RuntimeError("this step does not allow CUDA graphs")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    out = module.main(["--width", "4", "--latent-dim", "4", "--batch-size", "4", "--image-size", "8",
                       "--repeats", "1", "--warmup", "1", "--recipes", "vae", "--variants", "eager,compile",
                       "--threads", "1", "--device", "cpu"])
    (res,) = out["results"]
    assert set(res["variants"]) == {"eager"} and "this step does not allow CUDA graphs" in res["failed"]["compile"]
    assert "variant compile failed in its warm-up and is left out" in capsys.readouterr().out
