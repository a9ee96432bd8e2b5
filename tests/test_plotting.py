"""Figures: one plotting module, the object API (the user's matplotlib backend is never touched), readable
labels, and weak-error orders that are only reported when the errors are resolved."""
import matplotlib
import numpy as np
import pytest

import slowsde_jax  # importing the package must not touch the backend either
from slowsde_jax import comparison, plotting
from slowsde_jax.trajectory import Trajectory


def _traj(n_paths=20, eta=0.1, engine="discrete", spread=0.1, seed=0, method="adam"):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, 6)
    base = 1.0 + np.exp(-t)
    noise = spread * rng.standard_normal((n_paths, t.size))
    obs = {"trace_H": base + noise, "test_loss": np.exp(-3 * t) * (1 + 0.1 * np.abs(noise)), "v": base + noise}
    meta = {"engine": engine, "method": method, "eta": eta, "problem": "DiagonalNet", "noise": "LabelNoise",
            "hypers": {"eta": eta}}
    return Trajectory(t=t, theta=None, v=None, observables=obs, diverged_step=-np.ones(n_paths, int), meta=meta)


def _texts(fig):
    out = [fig.get_suptitle()] if hasattr(fig, "get_suptitle") else []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    for leg in fig.legends:
        out += [t.get_text() for t in leg.get_texts()]
    return out


def test_no_plotting_function_changes_the_matplotlib_backend(tmp_path, monkeypatch):
    before, rc_before = matplotlib.get_backend(), matplotlib.rcParams["backend"]

    def no_switch(*a, **k):
        raise AssertionError("a library must not call matplotlib.use")

    monkeypatch.setattr(matplotlib, "use", no_switch)
    tr, ode = _traj(), _traj(n_paths=1, eta=None, engine="label_noise_ode")
    figs = [plotting.plot_observables({"adam": tr, "sgd": [_traj(eta=0.05, seed=1)]}, tmp_path / "obs.png"),
            plotting.plot_observables({"adam": tr}),
            plotting.plot_cloud(tr, ode, "v", tmp_path / "cloud.png"),
            plotting.plot_weak_error([0.04, 0.02], [0.1, 0.05], [0.01, 0.01], 1.0, 2.5, "v", tmp_path / "w.png",
                                     method="adam", T=0.5),
            plotting.plot_sweep({"etas": [0.04, 0.02], "method": "adam", "T": 0.5, "observables": {"v": {
                "weak_error": [0.1, 0.05], "se": [0.01, 0.01], "order": 1.0, "constant": 2.5}}})]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    assert matplotlib.get_backend() == before and matplotlib.rcParams["backend"] == rc_before
    for name in ("obs.png", "cloud.png", "w.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_observable_figure_labels_title_legend_and_band():
    fig = plotting.plot_observables({"adam": _traj(), "sgd": _traj(eta=0.05, seed=1, method="sgd")},
                                    log_y=["test_loss"])
    texts = _texts(fig)
    assert "tr H" in texts and "test loss" in texts and "trace_H" not in texts
    assert "SDE time t = kη²" in texts
    assert "adam, η = 0.1" in texts and "sgd, η = 0.05" in texts
    assert any("10–90 % of paths" in t for t in texts)
    assert "diagonal net" in fig.get_suptitle() and "label noise" in fig.get_suptitle()
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes}
    assert scales["test loss"] == "log" and scales["tr H"] == "linear"
    assert plotting.label("trace_sqrt_diag_H") == "tr(Diag H^{1/2})"
    assert plotting.mathtext("tr(Diag H^{0.75})") == "tr(Diag $H^{0.75}$)"  # a superscript in figures


def test_no_band_for_a_deterministic_path():
    one = plotting.plot_observables({"ode": _traj(n_paths=1)})
    same = plotting.plot_observables({"ode": _traj(n_paths=5, spread=0.0)})
    for fig in (one, same):
        assert not any("10–90" in t for t in _texts(fig))
        assert not any(ax.collections for ax in fig.axes)
    cloud = plotting.plot_cloud(_traj(), _traj(n_paths=1, engine="label_noise_ode"), "v")
    assert "slow ODE: mean" in _texts(cloud) and not any("10–90" in t for t in _texts(cloud))


def test_weak_order_is_not_reported_when_errors_are_within_noise(tmp_path):
    r = comparison.weak_order([0.04, 0.02, 0.01], [0.01, 0.004, 0.008], [0.02, 0.02, 0.02])
    assert r["order_resolved"] is False and r["order"] is None and r["resolved"] == [False] * 3
    assert comparison.describe_order(r) == "order: not resolved (errors within noise)"
    fig = plotting.plot_weak_error([0.04, 0.02, 0.01], [0.01, 0.004, 0.008], [0.02, 0.02, 0.02], r["order"],
                                   r["constant"], "v", tmp_path / "w.png", method="adam", T=0.5)
    texts = _texts(fig)
    assert "order: not resolved (errors within noise)" in texts
    assert "slope 1 (reference)" in texts and not any(t.startswith("fit:") for t in texts)
    assert "adam" in fig.axes[0].get_title() and "T = 0.5" in fig.axes[0].get_title()
    assert (tmp_path / "w.png").stat().st_size > 0


def test_weak_order_fits_only_resolved_points():
    etas = np.array([0.04, 0.02, 0.01, 0.005])
    err = 3.0 * etas
    err[-1] = 0.001  # within noise: left out of the fit
    r = comparison.weak_order(etas, err, [0.001] * 4)
    assert r["order_resolved"] and r["resolved"] == [True, True, True, False]
    assert r["order"] == pytest.approx(1.0) and r["constant"] == pytest.approx(3.0)
    assert comparison.describe_order(r).startswith("order 1.00 ± ")


def test_weak_order_refuses_errors_at_rounding_level(tmp_path):
    """Errors of 1e-33 in an observable of scale 1e-3 (a loss at Phi_S) are rounding, not a weak error, even
    when their standard errors are smaller still; the same errors at scale 1e-30 would be resolved."""
    etas, err, se = [0.04, 0.02, 0.01], [5e-33, 3e-33, 1e-33], [1e-34] * 3
    r = comparison.weak_order(etas, err, se, scale=1e-3)
    assert r["order_resolved"] is False and r["order"] is None and r["unresolved"] == ["rounding"] * 3
    assert comparison.describe_order(r) == "order: not resolved (errors at rounding level)"
    assert comparison.weak_order(etas, err, se)["order_resolved"]  # without a scale: the noise rule only
    assert comparison.weak_order(etas, err, se, scale=1e-30)["order_resolved"]
    # the float32 epsilon raises the floor: 1e3 * 1.2e-7 * 1e-3 = 1.2e-7
    r32 = comparison.weak_order(etas, [1e-7, 6e-8, 3e-8], [1e-9] * 3, scale=1e-3, eps=float(np.finfo(np.float32).eps))
    assert r32["unresolved"] == ["rounding"] * 3
    mixed = comparison.weak_order([0.04, 0.02, 0.01], [1e-2, 1e-2, 1e-40], [1e-1, 1e-1, 1e-41], scale=1.0)
    assert mixed["unresolved"] == ["noise", "noise", "rounding"]
    fig = plotting.plot_sweep({"etas": etas, "method": "adam", "T": 0.5,
                               "observables": {"loss": {"weak_error": err, "se": se, **r}}}, "loss")
    assert "order: not resolved (errors at rounding level)" in _texts(fig)


def test_a_run_switched_to_another_method_says_so():
    fig = plotting.plot_observables({"adam": _traj(method="adame"), "sgd": _traj(eta=0.05, method="sgd")})
    texts = _texts(fig)
    assert "adam (adame), η = 0.1" in texts and "sgd, η = 0.05" in texts


def test_weak_error_plot_shows_the_order_and_its_standard_error():
    etas = np.array([0.04, 0.02, 0.01])
    err, se = 2.0 * etas, 0.05 * 2.0 * etas  # 5 % relative s.e. on each point
    r = comparison.weak_order(etas, err, se)
    # slope s.e. of a 3-point fit in log-log with s.e.(log err) = 0.05: 0.05 / sqrt(sum (x - mean x)^2)
    x = np.log(etas) - np.log(etas).mean()
    assert r["order"] == pytest.approx(1.0) and r["order_se"] == pytest.approx(0.05 / np.sqrt(np.sum(x**2)))
    assert comparison.describe_order(r) == f"order 1.00 ± {r['order_se']:.2f}"
    fig = plotting.plot_sweep({"etas": etas.tolist(), "method": "adam", "T": 0.5,
                               "observables": {"v": {"weak_error": err.tolist(), "se": se.tolist(), **r}}})
    assert f"fit: order 1.00 ± {r['order_se']:.2f} (resolved points)" in _texts(fig)
    assert comparison.weak_order(etas, err, 10 * err)["order_se"] is None


def _flow_view():
    """A synthetic theory_view: adam reduces tr(Diag H^{1/2}), sgd tr H; ODEs are deterministic per path."""
    from slowsde_jax import observables

    t = np.linspace(0.0, 1.0, 6)
    out = {}
    for name, eta in (("adam", 0.01), ("sgd", 0.02)):
        obs = {"test_loss": np.exp(-5 * t) * np.ones((3, 1)), "trace_H": 10 - t * np.arange(1, 4)[:, None],
               "trace_sqrt_diag_H": 20 - 2 * t * np.arange(1, 4)[:, None]}
        meta = {"engine": "discrete", "method": name, "eta": eta, "problem": "DiagonalNet", "noise": "LabelNoise",
                "projected": True}
        proj = Trajectory(t=t, theta=None, v=None, observables=obs, diverged_time=np.full(3, np.nan), meta=meta)
        ode = Trajectory(t=t, theta=None, v=None, observables={k: x * 0.5 for k, x in obs.items()},
                         diverged_time=np.full(3, np.nan), meta={**meta, "engine": "label_noise_ode"})
        out[name] = {"projected": proj, "slow_ode": ode}
    methods = {"adam": slowsde_jax.adam(), "sgd": slowsde_jax.sgd()}
    return out, observables.theory_summary(out, methods)


def test_slow_flow_figure_and_table_tell_which_measure_belongs_to_whom(tmp_path):
    from slowsde_jax import observables

    view, summary = _flow_view()
    assert summary["adam"]["measure"] == "trace_sqrt_diag_H" and summary["sgd"]["measure"] == "trace_H"
    assert summary["adam"]["end"][0] == pytest.approx(np.mean(20 - 2 * np.arange(1, 4)))
    fig = plotting.plot_slow_flow(view, summary, tmp_path / "flow.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["test loss at Φ_S(θ)", "tr(Diag $H^{1/2}$) at Φ_S(θ): reduced by adam",
                      "tr H at Φ_S(θ): reduced by sgd"]
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear", "linear"]
    assert all(ax.get_xlabel() == "SDE time t = kη²" for ax in fig.axes)
    texts = _texts(fig)
    assert "adam, η = 0.01: discrete at Φ_S(θ)" in texts and "sgd: slow ODE from the same states" in texts
    assert "diagonal net" in fig.get_suptitle()
    assert (tmp_path / "flow.png").read_bytes()[:4] == b"\x89PNG"
    table = observables.theory_table(summary)
    assert "tr(Diag H^{1/2})" in table and "note: adam at η = 0.01 ends 100% above its slow ODE" in table
    view["adam"]["slow_ode"] = view["adam"]["projected"]  # within 3 s.e. of the ODE: no note
    assert "note: adam" not in observables.theory_table(observables.theory_summary(
        view, {"adam": slowsde_jax.adam(), "sgd": slowsde_jax.sgd()}))


def test_run_table_names_a_switched_method_and_prints_no_nan_for_one_path():
    from slowsde_jax import jobs

    obs = {"test_loss": {"tail_mean": 0.5, "tail_se": float("nan")}}
    entry = {"method": "adame", "hypers": {"eta": 0.1}, "eta": 0.1, "steps": 10, "t_end": 0.1, "n_paths": 1,
             "n_diverged": 0, "observables": obs}
    table = jobs.summary_table({"adam": [entry], "sgd": [{**entry, "method": "sgd", "observables": {
        "test_loss": {"tail_mean": 0.25, "tail_se": 0.01}}}]})
    rows = table.splitlines()
    assert rows[2].startswith("adam (adame) ") and rows[3].startswith("sgd ") and "(sgd)" not in rows[3]
    assert "nan" not in table and "0.5 " in rows[2] + " " and "0.25±0.01" in rows[3]


def test_log_panels_draw_values_below_their_floor_at_a_dotted_line_and_small_motions_linearly():
    """A loss that reaches zero would break a log axis into gaps: it is drawn at the floor 1e-12 x top, marked
    by a dotted line and named in the title. A quantity that moves by 5 % keeps a linear axis."""
    t = np.linspace(0.0, 1.0, 6)
    loss = np.tile([1.0, 1e-3, 1e-9, 0.0, 0.0, 1e-14], (3, 1))
    steady = np.tile(1.0 + 0.05 * t, (3, 1))
    tr = Trajectory(t=t, theta=None, v=None, observables={"test_loss": loss, "steady_loss": steady},
                    meta={"engine": "discrete", "eta": 0.1})
    fig = plotting.plot_observables({"adam": tr}, log_y=["test_loss", "steady_loss"])
    ax_loss, ax_steady = fig.axes[1], fig.axes[0]  # panels in name order: steady_loss, test_loss
    assert ax_loss.get_yscale() == "log" and ax_steady.get_yscale() == "linear"
    drawn = [ln for ln in ax_loss.lines if ln.get_gid() != "floor"]
    y = np.asarray(drawn[0].get_ydata())
    assert np.all(y > 0) and np.isclose(y.min(), 1e-12)  # no gap: zeros sit at the floor
    assert [ln.get_gid() for ln in ax_loss.lines].count("floor") == 1
    assert "dotted: at or below 10⁻¹² × top" in ax_loss.get_title()
    assert "dotted" not in ax_steady.get_title()
