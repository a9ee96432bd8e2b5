"""YAML run configs: loading, ``--set`` overrides, structure checks, and building the objects they describe.

The value checkers (``check_int``, ``check_number``, ``check_choice``) live in
``slowsde_jax.validation``; this module only knows the YAML layout.

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

``paths_per_call`` (default 1024) cuts every run's paths into groups, one compiled call each, spread over
the devices (see ``slowsde_jax.Execution``). ``slow_flow: true`` also maps every run onto the manifold and integrates its slow ODE from the recorded
states (needs ``record_state``; sweeps are left out), see ``slowsde_jax.observables``.
Each run may override ``steps``/``T``, ``n_paths``, ``n_record``, ``v0``, ``record_state`` and give a ``sweep``
(name -> list of values). Every problem has its own keyword arguments (those of the problem's factory).
All checks happen before anything is compiled and raise ``ConfigError``:
``validate`` checks the layout and types, ``prepare`` builds the problem, the noise and every method
through their factories and checks every swept value, step count and the memory a run needs, with errors
naming the config path (``runs.adam.sweep.beta1[1]: must be < 1, got 1.5``). The CLI calls ``prepare``
before it makes a run folder.

Numbers in exponent form are read as YAML 1.2 reads them: ``1e-8`` is a float (YAML 1.1, PyYAML's default,
reads it as a string). Everything else follows PyYAML's YAML 1.1 (``yes``/``no`` are booleans).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import yaml

from . import methods, noise, problems
from .inputs import check_steps
from .integrators import AbstractSlowIntegrator, LabelNoiseODE, ProjectedEulerMaruyama
from .sweep import SWEEPABLE
from .sharpness import own_sharpness
from .validation import (ConfigError, check_bool, check_bound, check_choice, check_file_name, check_int, check_number, show,
                         suggest, within)

TOP_KEYS = {"name", "seed", "problem", "noise", "steps", "T", "n_paths", "n_record", "runs", "dtype",
            "record_state", "v0", "chunk_steps", "divergence_bound", "strict", "compare",
            "checkpoint_every_s", "slow_flow", "paths_per_call"}
COMPARE_KEYS = {"etas", "observables", "dt", "sde_paths", "project", "solver", "rtol", "atol"}
RUN_KEYS = {"method", "eta", "steps", "T", "n_paths", "n_record", "v0", "record_state", "sweep"}
INHERITED = ("steps", "T", "n_paths", "n_record", "v0", "record_state")
# Names people write for a key, and the key meant (difflib cannot guess that "lr" is "eta").
ALIASES = {"lr": "eta", "learning_rate": "eta", "step_size": "eta", "stepsize": "eta", "beta_1": "beta1",
           "beta_2": "beta2", "epsilon": "eps", "lambda": "lam", "optimizer": "method", "seeds": "seed",
           "paths": "n_paths", "num_paths": "n_paths", "n_steps": "steps", "num_steps": "steps"}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that ``1e-8``, ``1E5`` and ``2e+3`` (exponent, no dot) are floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes strings ``_Loader`` would read as floats (a run named "1e5")."""


for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        if _tag == "tag:yaml.org,2002:float":
            _Dumper.add_implicit_resolver(_tag, _regexp, [_first])


def _yaml(text):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def dump_config_text(cfg: dict) -> str:
    """``cfg`` as YAML that ``load_config`` reads back to the same dict."""
    return yaml.dump(cfg, Dumper=_Dumper, sort_keys=False)


def _suggest(name, allowed) -> str:
    alias = ALIASES.get(str(name).lower())
    if alias in allowed:
        return f" (did you mean '{alias}'?)"
    return suggest(name, allowed)


def default_config_text() -> str:
    return resources.files("slowsde_jax").joinpath("default_config.yaml").read_text()


def load_config(path: Optional[Union[str, os.PathLike]] = None) -> dict:
    """Read and validate a YAML config; ``None`` gives the built-in default."""
    if path is None:
        text, where = default_config_text(), "default config"
    else:
        p = Path(path)
        if p.is_dir():
            raise ConfigError("config", f"'{path}' is a directory, not a YAML config file")
        if not p.exists():
            raise ConfigError("config", f"cannot read '{path}': no such file")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) else "not a text file"
            raise ConfigError("config", f"cannot read '{path}': {why}") from None
        where = str(path)
    try:
        cfg = _yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("config", f"invalid YAML in {where}{loc}: {getattr(e, 'problem', e)}") from None
    return validate(cfg)


def _parse_value(text: str):
    try:
        return _yaml(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: dict, sets: Optional[Iterable[str]]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML; ``null`` removes the key) and re-validate."""
    cfg = copy.deepcopy(cfg)
    for item in sets or []:
        if "=" not in item:
            raise ConfigError("--set", f"expected KEY=VALUE (e.g. runs.adam.eta=0.05), got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or not all(p.strip() for p in parts):
            raise ConfigError("--set", f"'{item}' has an empty key; expected KEY=VALUE, e.g. runs.adam.eta=0.05")
        node = cfg
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {key}", f"'{where}' is {show(node[part])}, not a mapping with entries to set")
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


def _check_kwargs(fn, kwargs, field, skip=(), extra=()):
    allowed = (set(inspect.signature(fn).parameters) - set(skip)) | set(extra)
    for k in kwargs:
        if k not in allowed:
            raise ConfigError(f"{field}.{k}", f"unknown key{_suggest(k, allowed)}; allowed: {', '.join(sorted(allowed))}")


def _check_v0(field, v0):
    if isinstance(v0, str):
        check_choice(field, v0, ("zeros", "equilibrium"))
    elif isinstance(v0, list) and v0 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v0):
        for i, x in enumerate(v0):
            check_number(f"{field}[{i}]", x, low=0.0)
    elif isinstance(v0, (int, float)) and not isinstance(v0, bool):
        check_number(field, v0, low=0.0)
    else:
        raise ConfigError(field, f"must be 'zeros', 'equilibrium', a number or a list of numbers, got {show(v0)}")


def validate(cfg: Any) -> dict:
    """Check a config dict's structure and values; return it (unchanged)."""
    _expect(isinstance(cfg, dict), "config", f"must be a mapping of keys to values, got {type(cfg).__name__}")
    per_run = (RUN_KEYS - TOP_KEYS) | {p for f in methods.FACTORIES.values() for p in inspect.signature(f).parameters}
    for k in cfg:
        if not (isinstance(k, str) and k in TOP_KEYS):
            target = k if k in per_run else ALIASES.get(str(k).lower())
            hint = (f" ('{target}' is set per run: runs.<name>.{target})" if target in per_run
                    else _suggest(k, TOP_KEYS))
            raise ConfigError(str(k), f"unknown key{hint}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for k in ("problem", "noise", "runs"):
        _expect(k in cfg, k, "is required")
    if "seed" in cfg:
        check_int("seed", cfg["seed"], 0)
        _expect(cfg["seed"] < 2**64, "seed", f"must be < 2**64 (a 64-bit seed), got {cfg['seed']}")
    check_file_name("name", cfg.get("name", "run"))
    check_choice("dtype", cfg.get("dtype", "float64"), ("float64", "float32"))
    for k in ("n_paths", "n_record", "steps", "chunk_steps", "paths_per_call"):
        if k in cfg:
            check_int(k, cfg[k], 1)
    if "steps" in cfg:
        check_steps(cfg["steps"], "steps", "steps")
    if "T" in cfg:
        check_number("T", cfg["T"], low=0.0, low_open=True)
    if "checkpoint_every_s" in cfg:
        check_number("checkpoint_every_s", cfg["checkpoint_every_s"], low=0.0)
    for k in ("strict", "record_state", "slow_flow"):
        if k in cfg:
            check_bool(k, cfg[k])
    _expect(not cfg.get("slow_flow") or all(r.get("record_state", cfg.get("record_state", True)) is not False
                                            for r in (cfg["runs"].values() if isinstance(cfg.get("runs"), dict) else [])
                                            if isinstance(r, dict)),
            "slow_flow", "needs record_state: true (the recorded states are projected and start the slow ODE)")
    if "v0" in cfg:
        _check_v0("v0", cfg["v0"])
    if "divergence_bound" in cfg:
        _expect(isinstance(cfg["divergence_bound"], (int, float)) and not isinstance(cfg["divergence_bound"], bool),
                "divergence_bound", f"must be a number, got {show(cfg['divergence_bound'])}")
        check_bound("divergence_bound", cfg["divergence_bound"])

    prob = cfg["problem"]
    _expect(isinstance(prob, dict) and "kind" in prob, "problem", "must be a mapping with a 'kind'")
    _expect(isinstance(prob["kind"], str), "problem.kind", f"must be a name, got {prob['kind']!r}")
    _expect(prob["kind"] in problems.PROBLEMS, "problem.kind",
            f"unknown problem '{prob['kind']}'{suggest(prob['kind'], problems.PROBLEMS)}; choose from {', '.join(problems.PROBLEMS)}")
    _check_kwargs(problems.PROBLEMS[prob["kind"]], {k: v for k, v in prob.items() if k != "kind"}, "problem",
                  skip=("key",), extra=("kind",))
    if prob.get("n_train") is not None:
        check_int("problem.n_train", prob["n_train"], 1)

    nz = cfg["noise"]
    _expect(isinstance(nz, dict) and "kind" in nz, "noise", "must be a mapping with a 'kind'")
    _expect(isinstance(nz["kind"], str), "noise.kind", f"must be a name, got {nz['kind']!r}")
    _expect(nz["kind"] in noise.NOISES, "noise.kind",
            f"unknown noise '{nz['kind']}'{suggest(nz['kind'], noise.NOISES)}; choose from {', '.join(noise.NOISES)}")
    _check_kwargs(noise.NOISES[nz["kind"]], {k: v for k, v in nz.items() if k != "kind"}, "noise", extra=("kind",))

    runs = cfg["runs"]
    _expect(isinstance(runs, dict) and runs, "runs", "must be a non-empty mapping of run names to run settings")
    for name, run in runs.items():
        f = f"runs.{name}"
        _expect(isinstance(name, str), f, f"a run name must be a string, got {show(name)}")
        check_file_name(f, name)
        _expect(isinstance(run, dict), f, f"must be a mapping of run settings, got {show(run)}")
        _expect("method" in run, f"{f}.method", "is required")
        _expect(isinstance(run["method"], str), f"{f}.method", f"must be a name, got {run['method']!r}")
        _expect(run["method"] in methods.FACTORIES, f"{f}.method",
                f"unknown method '{run['method']}'{suggest(run['method'], methods.FACTORIES)}; choose from {', '.join(methods.METHOD_NAMES)}")
        hyper = {k: v for k, v in run.items() if k not in RUN_KEYS}
        factory = methods.FACTORIES[run["method"]]
        _check_kwargs(factory, hyper, f, extra=RUN_KEYS)
        for k, prm in inspect.signature(factory).parameters.items():
            _expect(prm.default is not inspect.Parameter.empty or k in hyper, f"{f}.{k}",
                    f"is required for {run['method']}" + (" (block ids, one per parameter, or 'leaf')" if k == "blocks" else ""))
        for k, v in hyper.items():
            if k == "bias_correction":
                check_bool(f"{f}.{k}", v)
            elif k != "blocks" and v is not None:
                check_number(f"{f}.{k}", v)
        if "record_state" in run:
            check_bool(f"{f}.record_state", run["record_state"])
        if "v0" in run:
            _check_v0(f"{f}.v0", run["v0"])
        sweep = {} if run.get("sweep") is None else run["sweep"]  # "sweep:" with nothing after it: no sweep
        _expect(isinstance(sweep, dict), f"{f}.sweep", f"must be a mapping of names to lists of values, got {show(sweep)}")
        _expect("eta" in run or "eta" in sweep or "compare" in cfg, f"{f}.eta", "is required")
        if "eta" in run:
            check_number(f"{f}.eta", run["eta"], low=0.0, low_open=True)
        for k in ("n_paths", "n_record", "steps"):
            if k in run:
                check_int(f"{f}.{k}", run[k], 1)
        if "steps" in run:
            check_steps(run["steps"], f"{f}.steps", "steps")
        if "T" in run:
            check_number(f"{f}.T", run["T"], low=0.0, low_open=True)
        has_T = "T" in run or ("T" in cfg and "steps" not in run)
        has_steps = "steps" in run or ("steps" in cfg and "T" not in run)
        _expect(has_T != has_steps, f"{f}.steps", "give exactly one of steps and T (here or at the top level)")

        for k, vals in sweep.items():
            _expect(isinstance(k, str) and k in SWEEPABLE, f"{f}.sweep.{k}",
                    f"not sweepable{_suggest(k, SWEEPABLE)}; sweepable: {', '.join(SWEEPABLE)}")
            _expect(isinstance(vals, list) and vals, f"{f}.sweep.{k}", f"must be a non-empty list of numbers, got {show(vals)}")
            for i, x in enumerate(vals):
                check_number(f"{f}.sweep.{k}[{i}]", x)
    if "compare" in cfg:
        _validate_compare(cfg["compare"])
    return cfg


def _validate_compare(cmp):
    """The ``compare:`` section of ``slowsde compare`` configs."""
    _expect(isinstance(cmp, dict), "compare", "must be a mapping")
    for k in cmp:
        _expect(k in COMPARE_KEYS, f"compare.{k}", f"unknown key{_suggest(k, COMPARE_KEYS)}")
    etas = cmp.get("etas")
    _expect(isinstance(etas, list) and len(etas) >= 2, "compare.etas",
            f"must be a list of at least two positive learning rates, got {show(etas)}")
    for i, e in enumerate(etas):
        check_number(f"compare.etas[{i}]", e, low=0.0, low_open=True)
    obs = cmp.get("observables", [])
    _expect(isinstance(obs, list) and all(isinstance(o, str) for o in obs), "compare.observables", "must be a list of names")
    for k in ("dt", "rtol", "atol"):
        if k in cmp:
            check_number(f"compare.{k}", cmp[k], low=0.0, low_open=True)
    if "sde_paths" in cmp:
        check_int("compare.sde_paths", cmp["sde_paths"], 1)
    if "solver" in cmp:
        check_choice("compare.solver", cmp["solver"], ("euler", "tsit5", "kvaerno5", "kencarp4"))
    if "project" in cmp:
        check_bool("compare.project", cmp["project"])


def build_problem(cfg: dict) -> problems.AbstractProblem:
    kw = {k: v for k, v in cfg["problem"].items() if k != "kind"}
    return problems.PROBLEMS[cfg["problem"]["kind"]](key=cfg.get("seed", 0), **kw)


def build_noise(cfg: dict) -> noise.AbstractNoise:
    kw = {k: v for k, v in cfg["noise"].items() if k != "kind"}
    return noise.NOISES[cfg["noise"]["kind"]](**kw)


def build_runs(cfg: dict) -> list[tuple[str, methods.AbstractMethod, dict[str, Any]]]:
    """[(name, method, simulate_discrete keyword arguments)] for every run of the config."""
    out = []
    for name, run in cfg["runs"].items():
        hyper = {k: v for k, v in run.items() if k not in RUN_KEYS}
        with within(f"runs.{name}."):
            method = methods.make_method(run["method"], **hyper)
        out.append((name, method, _run_kwargs(cfg, run)))
    return out


# ----- everything a run needs, checked before any work ---------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    """What ``prepare`` built: the problem, the noise and ``runs`` as ``build_runs`` gives them."""

    problem: object
    noise: object
    runs: list


def _built(section, build):
    """Call a factory: its ConfigErrors get the section's path; any other error it raises becomes one."""
    try:
        with within(section + "."):
            return build()
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError, IndexError, KeyError) as e:
        raise ConfigError(section, f"cannot be built from these settings ({type(e).__name__}: {e})") from None


def _source(f, run, k):
    """The config path of a setting a run may inherit from the top level."""
    return f"{f}.{k}" if k in run else k


def _check_run(cfg, name, run, problem, nz, method, etas):
    """Every grid point of one run: swept values, c*eta^2 < 1 at every eta, the step count, the memory."""
    from .inputs import check_memory, check_step_count, parse_inputs
    from .sweep import check_sweep_value

    f = f"runs.{name}"
    sweep = run.get("sweep") or {}
    for k, vals in sweep.items():
        if k != "eta":
            for i, v in enumerate(vals):
                check_sweep_value(problem, nz, method, k, v, f"{f}.sweep.{k}[{i}]")
    if method.has_v and method.c is not None:
        cs = ([(v, f"{f}.sweep.c[{i}]") for i, v in enumerate(sweep["c"])] if "c" in sweep
              else [(float(method.c), f"{f}.c" if "c" in run else None)])
        for (eta, ef), (c, cf) in itertools.product(etas, cs):
            x = c * float(eta) ** 2
            if not 0.0 < x < 1.0:
                where = cf if (cf is not None and ".sweep." in cf and ".sweep." not in ef) else ef
                raise ConfigError(where, f"c*eta^2 must lie in (0, 1) (beta2 = 1 - c*eta^2), got c*eta^2 = {x:g} "
                                         f"at eta = {show(eta)} with c = {show(c)}")
    T = run.get("T", cfg.get("T")) if "steps" not in run else None
    if T is not None:
        for eta, ef in etas:
            check_step_count(T, eta, ef, _source(f, run, "T"))
    n_paths, n_record = run.get("n_paths", cfg.get("n_paths", 1)), run.get("n_record", cfg.get("n_record", 100))
    v0 = run.get("v0", cfg.get("v0", "zeros" if "compare" not in cfg else "equilibrium"))
    dtype = "float32" if cfg.get("dtype") == "float32" else None
    try:
        import jax.numpy as jnp

        parse_inputs(problem, nz, method, key=cfg.get("seed", 0), n_paths=n_paths, n_record=n_record, theta0=None,
                     v0=v0, dtype=None if dtype is None else jnp.float32)
        n_cfg = int(np.prod([len(v) for k, v in sweep.items() if k != "eta"] or [1])) * len(etas)
        check_memory("n_paths", dim=problem.dim, n_cfg=n_cfg, n_paths=n_paths, n_record=n_record,
                     record_state=run.get("record_state", cfg.get("record_state", True)), has_v=method.has_v,
                     itemsize=4 if dtype else 8)
    except ConfigError as e:  # name the setting where the config gives it, and the run when it is inherited
        field = "seed" if e.field == "key" else _source(f, run, e.field)
        raise ConfigError(field, e.reason if field.startswith(f) else f"in run '{name}': {e.reason}") from None


def prepare(cfg: dict, command: str = "run") -> Prepared:
    """Validate ``cfg`` completely before any work: its layout (``validate``), the problem, noise and every
    method through their factories, and each run's grid (every swept value through its factory's checks,
    c*eta^2 in (0, 1) at every eta, a step count that fits, the memory it needs). For ``command="compare"``
    the learning rates are those of ``compare.etas`` and the observables must exist. Raises ConfigError
    naming the config path; returns the built objects."""
    cfg = validate(cfg)
    problem = _built("problem", lambda: build_problem(cfg))
    nz = _built("noise", lambda: build_noise(cfg))
    with within("noise."):
        nz.check(problem)
    planned = []
    for name, run in cfg["runs"].items():
        f = f"runs.{name}"
        hyper = {k: v for k, v in run.items() if k not in RUN_KEYS}
        method = _built(f, lambda: methods.make_method(run["method"], **hyper))
        with within(f + "."):
            method.check(problem)
        if command == "compare":
            etas = [(e, f"compare.etas[{i}]") for i, e in enumerate(cfg["compare"]["etas"])]
        elif "eta" in (run.get("sweep") or {}):
            etas = [(e, f"{f}.sweep.eta[{i}]") for i, e in enumerate(run["sweep"]["eta"])]
            for e, ef in etas:
                check_number(ef, e, low=0.0, low_open=True)
        else:
            _expect("eta" in run, f"{f}.eta", "is required by 'slowsde run' (only 'slowsde compare' takes compare.etas)")
            etas = [(run["eta"], f"{f}.eta")]
        _check_run(cfg, name, run, problem, nz, method, etas)
        planned.append((name, method, _run_kwargs(cfg, run)))
    if command == "compare":
        _check_compare(cfg, problem, nz, [m for _, m, _ in planned])
    if cfg.get("slow_flow") and command == "run":
        _check_slow_flow(cfg, planned)
    return Prepared(problem=problem, noise=nz, runs=planned)


SLOW_FLOW_SUFFIXES = (".at_phi", ".slow_ode")  # the slow-flow results' names in trajectories.npz


def _check_slow_flow(cfg, planned):
    """``slow_flow: true`` needs a run without a sweep, names that do not collide with the saved slow-flow
    results, and a finite S = S(v) at the recorded states: an AGM with eps = 0 must start at v0 = equilibrium."""
    _expect(any(not cfg["runs"][name].get("sweep") for name, _, _ in planned), "slow_flow",
            "needs at least one run without a sweep (swept runs are left out of the slow-flow view)")
    for name, method, _ in planned:
        _expect(not name.endswith(SLOW_FLOW_SUFFIXES), f"runs.{name}",
                f"a run name may not end in {' or '.join(SLOW_FLOW_SUFFIXES)} with slow_flow: true (those names "
                "hold the slow-flow results)")
        v0 = cfg["runs"][name].get("v0", cfg.get("v0", "zeros"))
        zero = v0 == "zeros" or (not isinstance(v0, str) and min(v0 if isinstance(v0, list) else [v0]) == 0)
        if method.has_v and method.eps == 0 and zero:
            raise ConfigError(f"runs.{name}.v0", "slow_flow with eps = 0 needs v0: equilibrium or v0 > 0 (at v = 0, "
                              "S = 1/(sqrt(v) + eps) is infinite and the states cannot be mapped onto Gamma)")


def _check_compare(cfg, problem, nz, methods_):
    import jax
    import jax.numpy as jnp

    from .inputs import check_memory

    _expect(cfg.get("seed", 0) + 1 < 2**64, "seed", "compare seeds the slow SDE with seed + 1: must be < 2**64 - 1")
    cmp = cfg["compare"]
    with within("compare."):  # the solver, tolerances and step must fit the slow side this noise gets
        compare_integrator(cmp, problem, nz)
    check_memory("compare.sde_paths", dim=problem.dim, n_cfg=1, n_paths=cmp.get("sde_paths", cfg.get("n_paths", 1)),
                 n_record=cfg.get("n_record", 10), record_state=True, has_v=True)

    own = sorted(jax.eval_shape(problem.observables, jnp.zeros(problem.dim)))
    for i, o in enumerate(cfg["compare"].get("observables") or []):
        for m in methods_:  # the problem's observables, tr H, tr(Diag H^{1/2}) and each method's own measure
            known = sorted({*own, "trace_H", "trace_sqrt_diag_H", own_sharpness(m)[0]})
            if o not in known:
                raise ConfigError(f"compare.observables[{i}]", f"unknown observable '{o}'{suggest(o, known)}; "
                                                               f"{type(problem).__name__} with {m.name} records "
                                                               f"{', '.join(known)}")


def compare_integrator(cmp: dict, problem: problems.AbstractProblem, nz: noise.AbstractNoise
                       ) -> AbstractSlowIntegrator:
    """The slow side of ``slowsde compare``: the label-noise ODE under label noise (``compare.solver``,
    ``rtol``, ``atol``), projected Euler-Maruyama otherwise (``compare.dt``; ``solver`` may only be
    ``euler``). ConfigError naming the key that does not apply."""
    if nz.label_noise_alpha(problem) is not None:
        if "dt" in cmp:
            raise ConfigError("dt", "sets the step of the general slow SDE; under label noise the slow side is the "
                                    "adaptive label-noise ODE (set rtol and atol)")
        return LabelNoiseODE(solver=cmp.get("solver", "tsit5"), rtol=cmp.get("rtol", 1e-8), atol=cmp.get("atol", 1e-10))
    for k in ("rtol", "atol"):
        if k in cmp:
            raise ConfigError(k, "sets a tolerance of the label-noise ODE; this noise gets the general slow SDE, "
                                 "integrated with fixed steps dt")
    if cmp.get("solver", "euler") != "euler":
        raise ConfigError("solver", f"the general slow SDE is integrated by projected Euler-Maruyama (solver: euler), "
                                    f"got {cmp['solver']!r}; ODE solvers apply to label noise only")
    return ProjectedEulerMaruyama(dt=cmp.get("dt", 1e-3))


def _run_kwargs(cfg, run):
    kw = {k: run.get(k, cfg.get(k)) for k in INHERITED if run.get(k, cfg.get(k)) is not None}
    if "T" in run:
        kw.pop("steps", None)
    if "steps" in run:
        kw.pop("T", None)
    kw["eta"] = run.get("eta")
    if run.get("sweep"):
        kw["sweep"] = run["sweep"]
    return kw
