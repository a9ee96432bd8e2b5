"""The abstract/final pattern of equinox (``docs/pattern.md``), enforced at class creation.

Abstract classes (named ``Abstract*``) declare abstract methods and ``eqx.AbstractVar`` fields; concrete
classes are marked ``typing.final`` and are never subclassed, so that every method is either abstract or
implemented exactly once. equinox checks the first half when a class is instantiated; this checks the second.
"""
from __future__ import annotations


def forbid_subclassing_final(cls: type) -> None:
    """Raise TypeError if a base of ``cls`` is marked ``@typing.final``. Call from ``__init_subclass__``."""
    for base in cls.__mro__[1:]:
        if vars(base).get("__final__", False) is True:
            raise TypeError(f"{base.__module__}.{base.__qualname__} is final and cannot be subclassed; "
                            f"subclass its abstract base instead")
