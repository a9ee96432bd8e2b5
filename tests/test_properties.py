"""Property-based checks of sweeps and ``--set`` values (hypothesis, few examples each: they run in seconds).

The oracle for a swept value is the documented range of each hyperparameter, written out here independently
of the factories: a sweep is accepted exactly when every value lies in range, and otherwise the error names
one out-of-range entry by its full path, ``runs.adam.sweep.<name>[<index>]``.
"""
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slowsde_jax as S
from slowsde_jax import config

BASE = ["problem.d=3", "problem.n=4", "problem.k=1", "problem.n_test=5", "T=null", "steps=10", "n_paths=1",
        "n_record=1", "slow_flow=false", "runs.adam.beta2=null", "runs.adam.c=10", "runs.adam.eta=0.1"]  # c eta^2 = 0.1
N = 4  # samples


@pytest.fixture(scope="module")
def base_cfg():
    cfg = config.apply_overrides(config.load_config(None), BASE)
    config.prepare(cfg)  # valid as it stands
    return cfg


def in_range(name, x, eta=0.1, c=10.0):
    """The documented range of each sweepable value (the method is adam with c = 10 unless c is swept)."""
    if not math.isfinite(x):
        return False
    return {"beta1": lambda: 0 <= x < 1, "eps": lambda: x >= 0, "c": lambda: x > 0 and x * eta**2 < 1,
            "delta": lambda: x >= 0, "eta": lambda: x > 0 and 0 < c * x**2 < 1 and 10 <= 2**62 * x**2,
            "n_train": lambda: x == int(x) and 1 <= x <= N}[name]()


numbers = st.one_of(st.floats(-3, 3, allow_nan=False), st.integers(-2, 6), st.sampled_from([0.0, 1.0, 1e-300, math.inf]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["beta1", "eps", "c", "delta", "eta", "n_train"]), values=st.lists(numbers, min_size=1, max_size=3))
def test_a_sweep_is_accepted_exactly_when_every_value_is_in_range(base_cfg, name, values):
    cfg = config.apply_overrides(base_cfg, [])
    cfg["runs"]["adam"]["sweep"] = {name: values}
    if name == "eta":  # the top-level steps fix the step count; give T so that eta sets it
        cfg.pop("steps")
        cfg["T"] = 10.0
    ok = [in_range(name, float(v)) for v in values]
    try:
        config.prepare(cfg)
    except S.ConfigError as e:
        assert not all(ok), f"{values} rejected: {e}"
        bad = [f"runs.adam.sweep.{name}[{i}]" for i, good in enumerate(ok) if not good]
        assert e.field in bad and "\n" not in str(e), (e.field, bad)
    else:
        assert all(ok), f"{name}={values} accepted"


def _formats(x):
    return [repr(x), f"{x:e}", f"{x:E}", f"{x:.3g}", f"{x:.0e}", f"{x:+.2e}", f"{x:g}"]


@settings(max_examples=40, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False, width=64), which=st.integers(0, 6))
def test_set_reads_numbers_as_people_write_them(x, which):
    text = _formats(x)[which]
    value = config._parse_value(text)
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (text, value)
    assert value == float(text) or (math.isnan(value) and math.isnan(float(text))), (text, value)


@settings(max_examples=40, deadline=None)
@given(x=st.floats(1e-12, 0.99), fmt=st.sampled_from(["{:e}", "{:E}", "{:g}", "{!r}"]))
def test_a_set_hyperparameter_reaches_the_config_as_that_number(x, fmt):
    text = fmt.format(x)
    cfg = config.apply_overrides(config.load_config(None), [f"runs.adam.eps={text}", f"runs.adam.beta1={text}"])
    assert cfg["runs"]["adam"]["eps"] == float(text) == cfg["runs"]["adam"]["beta1"]


items = st.one_of(st.text(max_size=20), st.builds(lambda k, v: f"{k}={v}", st.text(max_size=12), st.text(max_size=8)),
                  st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["", ".", "runs.", "runs.adam.", "seed.x", "a..b",
                                                                      "runs.adam.sweep", "=", "noise.kind"]),
                            st.text(max_size=8)))


@settings(max_examples=60, deadline=None)
@given(sets=st.lists(items, max_size=3))
def test_any_set_items_give_a_config_or_one_line_config_error(sets):
    try:
        config.apply_overrides(config.load_config(None), sets)
    except S.ConfigError as e:
        assert e.field and e.reason and "\n" not in str(e)
