"""``python -m slowsde_jax ...`` is the ``slowsde`` command."""
import sys

from .cli import main

sys.exit(main())
