"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent XLA cache for the whole session, this process, the runs it
# starts and pytest-xdist's workers (spawned after this runs in the controller,
# they inherit the variable; only the controller removes the directory): many
# tests build the same tiny supernet's steps, and a fresh closure
# under jax.jit compiles again unless the compiled program is found on disk.
# JAX fixes its cache at the first compile, so it is set here, before any.
_OWN_CACHE = "JDARTS_TEST_XLA_CACHE" not in os.environ  # else the caller's, kept
if _OWN_CACHE:
  os.environ["JDARTS_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jdarts-tests-xla-")
_XLA_CACHE = os.environ["JDARTS_TEST_XLA_CACHE"]


import pytest  # noqa: E402  (after XLA_FLAGS, which must precede any jax import)


@pytest.fixture
def x64():
  """Float64 for this test only; restores the previous setting afterwards."""
  import jax
  prev = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", prev)


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False,
                   help="also run tests marked slow (real multi-process runs, extra variants)")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: minutes on 2 CPU cores; run with --runslow")
  from jdarts import host_memory, runs
  runs.enable_compilation_cache(_XLA_CACHE)
  # A run drops every program compiled in its process before compiling its step
  # (`drop_init_programs`); the runs the tests start in this process would make
  # every later test compile again what it shares (measured: the suite 645 s
  # against ~520 s). Runs in child processes still drop theirs;
  # test_host_memory.py tests the function in one.
  host_memory.drop_compiled = lambda: None


def pytest_unconfigure(config):
  if _OWN_CACHE:
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow") or os.environ.get("JDARTS_SLOW_TESTS") == "1":
    return
  skip = pytest.mark.skip(reason="slow: run with --runslow (or JDARTS_SLOW_TESTS=1)")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
