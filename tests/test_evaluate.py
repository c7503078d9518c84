"""python -m kldiv.evaluate on a finished (tiny) run, and the anomaly benchmark end to end."""

import json
from pathlib import Path

import pytest

from kldiv.evaluate import main as evaluate_main
from recipe_runner import REPO, load_recipe, load_script

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = ["--image-size", "8", "--latent-dim", "4", "--width", "4", "--batch-size", "16", "--steps", "2"]


@pytest.mark.parametrize(("recipe", "score"), [("latent_ebm", "-f(x, mu_q(x))"), ("triangle", "-f(x)")])
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


@pytest.mark.skipif(not (SHARED / "MNIST").exists(), reason="MNIST is not at ../shared/data")
def test_anomaly_benchmark_writes_its_table(tmp_path):
    module = load_script(REPO / "benchmarks" / "anomaly_mnist.py")
    module.main(["--digits", "4", "--epochs", "1", "--average-last", "1", "--width", "4", "--latent-dim", "4",
                 "--train-images", "200", "--test-images", "300", "--out", str(tmp_path), "--data-root", str(SHARED)])
    table = (tmp_path / "table.md").read_text()
    assert "| 4 | 0.337 | 0.723 |" in table and "python benchmarks/anomaly_mnist.py --digits 4" in table
    result = json.loads((tmp_path / "digit4.json").read_text())
    assert set(result) == {"latent-ebm", "vae"} and all(0 < r["auprc"] <= 1 for r in result.values())
