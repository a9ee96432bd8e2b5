"""Every public function and method of slowsde_jax has a fully annotated signature whose annotations resolve.

Public: the names in a module's ``__all__`` (every public name defined there when it has none), and the public
methods and properties of the public classes defined in the package. Fully annotated: every parameter except
self/cls/*args/**kwargs, and the return. Resolve: ``typing.get_type_hints`` evaluates them (catches typos in
string annotations under ``from __future__ import annotations``).
"""
import importlib
import inspect
import pkgutil
import typing

import pytest

import slowsde_jax

# (module, qualname): why the signature is not (yet) fully annotated. Keep this list short and explained.
EXEMPT: dict = {}  # (module, name) -> why it is not annotated; empty: every public signature is


def _modules():
    yield slowsde_jax
    for info in pkgutil.iter_modules(slowsde_jax.__path__):
        if not info.name.startswith("_"):  # private modules and __main__ (which runs the CLI on import)
            yield importlib.import_module(f"slowsde_jax.{info.name}")


def _public_names(mod):
    if hasattr(mod, "__all__"):
        return list(mod.__all__)
    return [k for k, v in vars(mod).items()
            if not k.startswith("_") and getattr(v, "__module__", None) == mod.__name__]


def _as_function(attr):
    if isinstance(attr, (staticmethod, classmethod)):
        attr = attr.__func__
    if isinstance(attr, property):
        attr = attr.fget
    return attr if inspect.isfunction(attr) else None


def _public_callables():
    """{(module, qualname): function} for every public function and public method of a public class."""
    found = {}
    for mod in _modules():
        for name in _public_names(mod):
            obj = getattr(mod, name)
            if not getattr(obj, "__module__", "").startswith("slowsde_jax"):
                continue  # re-exported from elsewhere (jax, optax, ...)
            if inspect.isclass(obj):
                for k, attr in vars(obj).items():
                    f = _as_function(attr)
                    if not k.startswith("_") and f is not None and f.__module__.startswith("slowsde_jax"):
                        found[(f.__module__, f.__qualname__)] = f
            elif inspect.isfunction(obj):
                found[(obj.__module__, obj.__qualname__)] = obj
    return found


PUBLIC = _public_callables()
CHECKED = sorted(k for k in PUBLIC if k not in EXEMPT)

# Names some modules import only under TYPE_CHECKING (import cycles, lazy matplotlib): the package's public
# classes and matplotlib's Figure.
_CLASSES = {name: obj for mod in _modules() for name in _public_names(mod)
            if inspect.isclass(obj := getattr(mod, name)) and obj.__module__.startswith("slowsde_jax")}
_CLASSES["Figure"] = importlib.import_module("matplotlib.figure").Figure


def _missing(f):
    sig = inspect.signature(f)
    out = [p.name for p in sig.parameters.values()
           if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
           and p.annotation is p.empty]
    if sig.return_annotation is sig.empty:
        out.append("return")
    return out


def test_the_walk_finds_the_api():
    # A broken walk (nothing found) would make the checks below pass vacuously.
    names = {q for _, q in PUBLIC}
    for expected in ("simulate_discrete", "simulate_slow_sde", "adam", "AbstractMethod.optax", "project",
                     "AbstractNoise.covariance_factor", "GridBrownianPath.evaluate", "load_run", "build_runs"):
        assert expected in names
    assert len(CHECKED) > 150


def test_exemptions_name_real_functions():
    assert set(EXEMPT) <= set(PUBLIC), sorted(set(EXEMPT) - set(PUBLIC))


@pytest.mark.parametrize("key", CHECKED, ids=[f"{m.rsplit('.', 1)[1]}.{q}" for m, q in CHECKED])
def test_signature_is_annotated(key):
    f = PUBLIC[key]
    assert not _missing(f), f"{key[0]}.{key[1]} lacks annotations for {_missing(f)}"
    hints = typing.get_type_hints(f, localns=_CLASSES)
    assert "return" in hints
