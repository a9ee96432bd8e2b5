"""Test-wide settings: the CLI's compilation cache stays off (tests/test_compile_cache.py turns it on itself)."""
import os

os.environ["SLOWSDE_CACHE_DIR"] = "off"
