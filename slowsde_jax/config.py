"""YAML run configs: loading, ``--set`` overrides, structure checks, and building the objects they describe.

The value checkers (:func:`~slowsde_jax.validation.check_int`, ``check_number``, ``check_choice``) live in
:mod:`slowsde_jax.validation`; this module only knows the YAML layout.

A config (see ``configs/default.yaml``)::

    name: diagnet_adam_vs_sgd       # run folder prefix
    seed: 0                         # one seed for data, initialization and noise
    problem: {kind: diagonal_net, d: 40, n: 16, k: 2}
    noise: {kind: label_noise, delta: 0.5}
    steps: 200000                   # or T: SDE time (steps = T / eta^2 per run)
    n_paths: 4
    n_record: 50
    runs:
      adam: {method: adam, eta: 0.1, beta2: 0.95, eps: 1.0e-6}
      sgd: {method: sgd, eta: 0.005}

``slow_flow: true`` also maps every run onto the manifold and integrates its slow ODE from the recorded
states (needs ``record_state``; sweeps are left out), see :mod:`slowsde_jax.observables`.
Each run may override ``steps``/``T``, ``n_paths``, ``n_record``, ``v0``, ``record_state`` and give a ``sweep``
(name -> list of values). Every problem has its own keyword arguments (those of the problem's factory).
All checks happen before anything is compiled and raise :class:`~slowsde_jax.validation.ConfigError`.
"""
from __future__ import annotations

import copy
import inspect
from importlib import resources
from pathlib import Path

import yaml

from . import methods, noise, problems
from .validation import ConfigError, check_choice, check_int, check_number, suggest

TOP_KEYS = {"name", "seed", "problem", "noise", "steps", "T", "n_paths", "n_record", "runs", "dtype",
            "record_state", "v0", "chunk_steps", "divergence_bound", "strict", "compare",
            "checkpoint_every_s", "slow_flow"}
COMPARE_KEYS = {"etas", "observables", "dt", "sde_paths", "project", "solver", "rtol", "atol"}
RUN_KEYS = {"method", "eta", "steps", "T", "n_paths", "n_record", "v0", "record_state", "sweep"}
INHERITED = ("steps", "T", "n_paths", "n_record", "v0", "record_state")


def default_config_text() -> str:
    return resources.files("slowsde_jax").joinpath("default_config.yaml").read_text()


def load_config(path=None) -> dict:
    """Read and validate a YAML config; ``None`` gives the built-in default."""
    if path is None:
        text, where = default_config_text(), "default config"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", f"cannot read '{path}': no such file")
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError("config", f"cannot read '{path}': {e.strerror}") from None
        where = str(path)
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("config", f"invalid YAML in {where}{loc}: {getattr(e, 'problem', e)}") from None
    return validate(cfg)


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: dict, sets) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; ``null`` removes the key) and re-validate."""
    cfg = copy.deepcopy(cfg)
    for item in sets or []:
        if "=" not in item:
            raise ConfigError("--set", f"expected key=value, got '{item}'")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = cfg
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        value = _parse_value(value)
        if value is None:  # key=null removes the entry (e.g. --set steps=null --set T=0.5)
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return validate(cfg)


def _expect(cond, field, reason):
    if not cond:
        raise ConfigError(field, reason)


def _check_kwargs(fn, kwargs, field, skip=()):
    allowed = set(inspect.signature(fn).parameters) - set(skip)
    for k in kwargs:
        if k not in allowed:
            raise ConfigError(f"{field}.{k}", f"unknown key{suggest(k, allowed)}; allowed: {', '.join(sorted(allowed))}")


def validate(cfg) -> dict:
    """Check a config dict's structure and values; return it (unchanged)."""
    _expect(isinstance(cfg, dict), "config", f"must be a mapping of keys to values, got {type(cfg).__name__}")
    for k in cfg:
        _expect(k in TOP_KEYS, str(k), f"unknown key{suggest(k, TOP_KEYS)}")
    for k in ("problem", "noise", "runs"):
        _expect(k in cfg, k, "is required")
    if "seed" in cfg:
        check_int("seed", cfg["seed"])
    _expect(isinstance(cfg.get("name", "run"), str), "name", "must be a string")
    check_choice("dtype", cfg.get("dtype", "float64"), ("float64", "float32"))
    for k in ("n_paths", "n_record", "steps", "chunk_steps"):
        if k in cfg:
            check_int(k, cfg[k], 1)
    if "T" in cfg:
        check_number("T", cfg["T"], low=0.0, low_open=True)
    if "checkpoint_every_s" in cfg:
        check_number("checkpoint_every_s", cfg["checkpoint_every_s"], low=0.0)
    _expect(isinstance(cfg.get("strict", False), bool), "strict", "must be true or false")
    _expect(isinstance(cfg.get("slow_flow", False), bool), "slow_flow", "must be true or false")
    _expect(not cfg.get("slow_flow") or all(r.get("record_state", cfg.get("record_state", True)) is not False
                                            for r in (cfg.get("runs") or {}).values() if isinstance(r, dict)),
            "slow_flow", "needs record_state: true (the recorded states are projected and start the slow ODE)")
    if "divergence_bound" in cfg:
        check_number("divergence_bound", cfg["divergence_bound"], low=0.0, low_open=True)

    prob = cfg["problem"]
    _expect(isinstance(prob, dict) and "kind" in prob, "problem", "must be a mapping with a 'kind'")
    _expect(isinstance(prob["kind"], str), "problem.kind", f"must be a name, got {prob['kind']!r}")
    _expect(prob["kind"] in problems.PROBLEMS, "problem.kind",
            f"unknown problem '{prob['kind']}'{suggest(prob['kind'], problems.PROBLEMS)}; choose from {', '.join(problems.PROBLEMS)}")
    _check_kwargs(problems.PROBLEMS[prob["kind"]], {k: v for k, v in prob.items() if k != "kind"}, "problem", skip=("key",))

    nz = cfg["noise"]
    _expect(isinstance(nz, dict) and "kind" in nz, "noise", "must be a mapping with a 'kind'")
    _expect(isinstance(nz["kind"], str), "noise.kind", f"must be a name, got {nz['kind']!r}")
    _expect(nz["kind"] in noise.NOISES, "noise.kind",
            f"unknown noise '{nz['kind']}'{suggest(nz['kind'], noise.NOISES)}; choose from {', '.join(noise.NOISES)}")
    _check_kwargs(noise.NOISES[nz["kind"]], {k: v for k, v in nz.items() if k != "kind"}, "noise")

    runs = cfg["runs"]
    _expect(isinstance(runs, dict) and runs, "runs", "must be a non-empty mapping of run names to run settings")
    for name, run in runs.items():
        f = f"runs.{name}"
        _expect(isinstance(run, dict), f, "must be a mapping")
        _expect("method" in run, f"{f}.method", "is required")
        _expect(isinstance(run["method"], str), f"{f}.method", f"must be a name, got {run['method']!r}")
        _expect(run["method"] in methods.FACTORIES, f"{f}.method",
                f"unknown method '{run['method']}'{suggest(run['method'], methods.FACTORIES)}; choose from {', '.join(methods.METHOD_NAMES)}")
        hyper = {k: v for k, v in run.items() if k not in RUN_KEYS}
        _check_kwargs(methods.FACTORIES[run["method"]], hyper, f)
        for k, v in hyper.items():
            if k == "bias_correction":
                _expect(isinstance(v, bool), f"{f}.{k}", f"must be true or false, got {v!r}")
            elif k != "blocks" and v is not None:
                check_number(f"{f}.{k}", v)
        _expect("eta" in run or "eta" in run.get("sweep", {}) or "compare" in cfg, f"{f}.eta", "is required")
        if "eta" in run:
            check_number(f"{f}.eta", run["eta"], low=0.0, low_open=True)
        for k in ("n_paths", "n_record", "steps"):
            if k in run:
                check_int(f"{f}.{k}", run[k], 1)
        if "T" in run:
            check_number(f"{f}.T", run["T"], low=0.0, low_open=True)
        has_T = "T" in run or ("T" in cfg and "steps" not in run)
        has_steps = "steps" in run or ("steps" in cfg and "T" not in run)
        _expect(has_T != has_steps, f"{f}.steps", "give exactly one of steps and T (here or at the top level)")
        sweep = run.get("sweep", {})
        _expect(isinstance(sweep, dict), f"{f}.sweep", "must be a mapping of names to lists of values")
        for k, vals in sweep.items():
            _expect(isinstance(vals, list) and vals and all(isinstance(x, (int, float)) for x in vals),
                    f"{f}.sweep.{k}", "must be a non-empty list of numbers")
    if "compare" in cfg:
        _validate_compare(cfg["compare"])
    return cfg


def _validate_compare(cmp):
    """The ``compare:`` section of ``slowsde compare`` configs."""
    _expect(isinstance(cmp, dict), "compare", "must be a mapping")
    for k in cmp:
        _expect(k in COMPARE_KEYS, f"compare.{k}", f"unknown key{suggest(k, COMPARE_KEYS)}")
    etas = cmp.get("etas")
    _expect(isinstance(etas, list) and len(etas) >= 2 and all(isinstance(e, (int, float)) and e > 0 for e in etas),
            "compare.etas", "must be a list of at least two positive learning rates")
    obs = cmp.get("observables", [])
    _expect(isinstance(obs, list) and all(isinstance(o, str) for o in obs), "compare.observables", "must be a list of names")
    for k in ("dt", "rtol", "atol"):
        if k in cmp:
            check_number(f"compare.{k}", cmp[k], low=0.0, low_open=True)
    if "sde_paths" in cmp:
        check_int("compare.sde_paths", cmp["sde_paths"], 1)
    check_choice("compare.solver", cmp.get("solver", "tsit5"), ("tsit5", "kvaerno5"))


def build_problem(cfg):
    kw = {k: v for k, v in cfg["problem"].items() if k != "kind"}
    return problems.PROBLEMS[cfg["problem"]["kind"]](key=cfg.get("seed", 0), **kw)


def build_noise(cfg):
    kw = {k: v for k, v in cfg["noise"].items() if k != "kind"}
    return noise.NOISES[cfg["noise"]["kind"]](**kw)


def build_runs(cfg):
    """[(name, method, simulate_discrete keyword arguments)] for every run of the config."""
    out = []
    for name, run in cfg["runs"].items():
        hyper = {k: v for k, v in run.items() if k not in RUN_KEYS}
        method = methods.make_method(run["method"], **hyper)
        kw = {k: run.get(k, cfg.get(k)) for k in INHERITED if run.get(k, cfg.get(k)) is not None}
        if "T" in run:
            kw.pop("steps", None)
        if "steps" in run:
            kw.pop("T", None)
        kw["eta"] = run.get("eta")
        if run.get("sweep"):
            kw["sweep"] = run["sweep"]
        out.append((name, method, kw))
    return out
