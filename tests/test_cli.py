"""The command line: the default job, overrides, run folders, load_run, and one-line config errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from slowsde_jax import cli, config, load_run

# the default config's showcase (T, slow_flow, Adam at eta 0.01) swapped for a small, fast discrete run
SMALL = ["problem.d=6", "problem.n=4", "problem.n_test=50", "T=null", "steps=400", "slow_flow=false", "runs.adam.eta=0.1",
         "n_paths=2", "n_record=4"]


def _run(tmp_path, *args):
    return cli.main(["run", *args, "--out", str(tmp_path), "--quiet"])


def test_default_config_is_valid_and_matches_the_file_in_configs():
    cfg = config.load_config(None)
    assert set(cfg["runs"]) == {"adam", "sgd"} and cfg["problem"]["kind"] == "diagonal_net"
    repo_copy = Path(__file__).parents[1] / "configs" / "default.yaml"
    assert yaml.safe_load(repo_copy.read_text()) == cfg


def test_run_writes_a_folder_that_load_run_reads_back(tmp_path, capsys):
    sets = sum((["--set", s] for s in SMALL), [])
    assert _run(tmp_path, *sets) == 0
    out = capsys.readouterr().out
    assert "adam" in out and "sgd" in out and "test_loss" in out
    (folder,) = list(tmp_path.iterdir())
    assert {p.name for p in folder.iterdir()} >= {"config.yaml", "summary.json", "trajectories.npz", "observables.png"}
    trajs, summary = load_run(folder)
    assert summary["status"] == "completed" and summary["seed"] == 0 and "jax" in summary["environment"]
    assert set(trajs) == {"adam", "sgd"}
    adam = trajs["adam"]
    assert adam.theta.shape == (2, 5, 12) and adam.v.shape == (2, 5, 12) and trajs["sgd"].v is None
    assert adam.meta["steps"] == 400 and np.isclose(adam.t[-1], 400 * 0.1**2)
    s = summary["runs"]["adam"][0]["observables"]["test_loss"]
    np.testing.assert_allclose(s["final_mean"], adam.observables["test_loss"][:, -1].mean())
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["problem"]["d"] == 6


def test_sweep_in_a_config(tmp_path):
    cfg = {"name": "sw", "problem": {"kind": "hyperbola"}, "noise": {"kind": "label_noise", "delta": 0.5},
           "T": 0.01, "n_paths": 2, "n_record": 2,
           "runs": {"adam": {"method": "adam", "sweep": {"eta": [0.05, 0.1]}, "v0": "equilibrium"}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert _run(tmp_path / "out", str(path)) == 0
    trajs, summary = load_run(next((tmp_path / "out").iterdir()))
    assert isinstance(trajs["adam"], list) and [t.meta["steps"] for t in trajs["adam"]] == [4, 1]


@pytest.mark.parametrize("sets,field", [
    (["runs.adam.eta=-1"], "runs.adam.eta"), (["runs.adam.method=adma"], "runs.adam.method"),
    (["problem.kind=diagnal_net"], "problem.kind"), (["n_paths=0"], "n_paths"), (["runs.adam.lr=0.1"], "runs.adam.lr"),
    (["runs.adam.beta2=1.5"], "runs.adam.beta2"), (["problem.d=abc"], "problem.d"), (["stpes=3"], "stpes"),
    (["paths_per_call=0"], "paths_per_call"), (["paths_per_call=2.5"], "paths_per_call"),
])
def test_config_mistakes_exit_2_with_one_line_naming_the_field(tmp_path, capsys, sets, field):
    args = sum((["--set", s] for s in SMALL + sets), [])
    assert _run(tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"slowsde: error: {field}:"), err
    assert list(tmp_path.iterdir()) == []  # rejected before a run folder is made


def test_missing_and_invalid_files(tmp_path, capsys):
    assert _run(tmp_path, str(tmp_path / "nope.yaml")) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("problem: [1, 2\n")
    assert _run(tmp_path, str(bad)) == 2
    assert "invalid YAML" in capsys.readouterr().err


def test_console_script_runs_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "slowsde_jax.cli", "run", "--set", "runs.sgd.eta=0", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "slowsde: error: runs.sgd.eta: must be > 0, got 0"


def test_compare_writes_weak_errors_and_plots(tmp_path, capsys):
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "hyperbola_compare.yaml").read_text())
    cfg.update(n_paths=200, n_record=2, T=0.1)
    cfg["runs"] = {"adam": cfg["runs"]["adam"]}
    cfg["compare"]["etas"] = [0.04, 0.02]
    cfg["compare"]["observables"] = ["u", "v", "trace_sqrt_diag_H"]  # a sharpness measure, recorded by both sides
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["compare", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "fitted order" in capsys.readouterr().out
    folder = next((tmp_path / "out").iterdir())
    result = json.loads((folder / "comparison.json").read_text())
    assert result["adam"]["sde_engine"] == "label_noise_ode" and result["adam"]["etas"] == [0.04, 0.02]
    assert len(result["adam"]["observables"]["v"]["weak_error"]) == 2
    assert len(result["adam"]["observables"]["trace_sqrt_diag_H"]["weak_error"]) == 2
    assert (folder / "cloud_adam_v.png").exists() and (folder / "weak_error_adam_u.png").exists()
    trajs, summary = load_run(folder)
    assert summary["status"] == "completed" and len(trajs["adam.discrete"]) == 2


def test_compare_config_errors(tmp_path, capsys):
    path = Path(__file__).parents[1] / "configs" / "hyperbola_compare.yaml"
    assert cli.main(["compare", str(path), "--set", "compare.observables=[block_sharpness]", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("slowsde: error: compare.observables[0]: unknown observable 'block_sharpness'")
    assert cli.main(["compare", str(path), "--set", "compare.etas=[0.1]", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("slowsde: error: compare.etas:")
    assert cli.main(["compare", str(path), "--set", "compare.dtt=0.1", "--out", str(tmp_path)]) == 2
    assert "did you mean 'dt'" in capsys.readouterr().err


def test_notebook_is_valid_and_its_code_compiles():
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb").read_text())
    assert nb["nbformat"] == 4
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            code = "".join(cell["source"])  # IPython magics (%matplotlib inline) are not Python
            compile("\n".join(line for line in code.splitlines() if not line.lstrip().startswith("%")), "cell", "exec")


def test_run_folder_keeps_the_records_once(tmp_path):
    """Records are streamed to records/<run>/ while running; a finished folder holds them only in
    trajectories.npz."""
    sets = ["problem.d=4", "problem.n=3", "problem.k=1", "problem.n_test=10", "T=null", "steps=20", "n_paths=2",
            "n_record=2", "slow_flow=false", "runs.adam.eta=0.1"]
    assert cli.main(["run", *sum((["--set", s] for s in sets), []), "--out", str(tmp_path), "--quiet"]) == 0
    folder = next(tmp_path.iterdir())
    assert (folder / "trajectories.npz").is_file() and not (folder / "records").exists()
    assert set(load_run(folder)[0]) >= {"adam", "sgd"}
