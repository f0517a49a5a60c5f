"""Tests of jdarts.checkpoint: exact round trip, retention, atomicity, corruption, preemption."""
import gc
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdarts import checkpoint as ck
from jdarts.search import SearchState

# When a damaged step fails to restore, orbax leaves some of its read coroutines
# un-awaited; Python reports them at garbage collection. Harmless here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_garbage():
  """Collects those coroutines inside the test, where the filter above applies."""
  yield
  gc.collect()

# 1024 random uint32 words do not compress, so orbax stores them verbatim (zstd
# raw block) and, being larger than OCDBT inlines into its (checksummed) b-tree
# nodes, in a data file without any checksum of its own.
_NOISE = np.random.RandomState(0).randint(0, 2**32, size=1024, dtype=np.uint32)
_W_OPT = optax.sgd(0.1, momentum=0.9)
_A_OPT = optax.adam(3e-4)


def _state(step=3, shift=0.0, typed_key=True, width=3):
  """A small SearchState with momentum and Adam states, a key and a bfloat16 leaf."""
  params = {"conv": {"kernel": jnp.arange(2 * width, dtype=jnp.float32).reshape(2, width)
                               + shift},
            "scale": jnp.asarray([0.5, -1.25], jnp.bfloat16),
            "noise": jnp.asarray(_NOISE)}
  alphas = {"normal": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(3, 2) + shift}
  w_os = _W_OPT.init(params)
  a_os = _A_OPT.init(alphas)
  # One real update each, so momentum and Adam moments are non-trivial.
  _, w_os = _W_OPT.update(jax.tree_util.tree_map(jnp.ones_like, params), w_os, params)
  _, a_os = _A_OPT.update(jax.tree_util.tree_map(lambda a: 0.1 * a, alphas), a_os, alphas)
  rng = jax.random.key(7) if typed_key else jax.random.PRNGKey(7)
  return SearchState(step=jnp.asarray(step, jnp.int32), params=params, alphas=alphas,
                     w_opt_state=w_os, a_opt_state=a_os, rng=rng)


def _bits(x):
  x = jax.random.key_data(x) if ck._is_key_array(x) else x
  a = np.asarray(x)
  return a.dtype, a.shape, a.tobytes()


def _assert_bitwise_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert ck._is_key_array(x) == ck._is_key_array(y)
    if ck._is_key_array(x):
      assert jax.random.key_impl(x) == jax.random.key_impl(y)
    assert _bits(x) == _bits(y)


def _noise_files(step_dir):
  """The data files that hold `_NOISE` verbatim, with the offset of its bytes.

  Orbax writes each process's OCDBT database and a merged copy of it, so the
  same chunk is in two files.
  """
  pattern = _NOISE[8:24].tobytes()
  found = []
  for root, _, files in os.walk(step_dir):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "rb") as fh:
        i = fh.read().find(pattern)
      if i >= 0:
        found.append((path, i))
  assert found, f"no file under {step_dir} holds the noise leaf verbatim"
  return found


def _save_steps(directory, steps, **kw):
  with ck.Checkpointer(directory, max_to_keep=5, save_every_steps=1, **kw) as c:
    for s in steps:
      assert c.save(s, _state(step=s, shift=float(s)), {"epoch": s, "data": {"pos": [s, 2]}})


@pytest.mark.parametrize("typed_key", [True, False])
def test_round_trip_is_bitwise_exact(tmp_path, typed_key):
  state = _state(typed_key=typed_key)
  extra = {"epoch": 2, "iterators": {"train": {"pos": 17}}, "note": "é"}
  with ck.Checkpointer(tmp_path, save_every_steps=1) as c:
    assert c.restore_latest(state) is None  # empty directory
    assert c.save(3, state, extra)
    assert not c.save(3, state, extra)  # already saved
  # A fresh Checkpointer, as a resumed process would open it.
  with ck.Checkpointer(tmp_path) as c:
    restored, extra2, step = c.restore_latest(_state(step=0, shift=9.0, typed_key=typed_key))
  assert step == 3 and extra2 == extra
  assert isinstance(restored, SearchState)
  assert isinstance(restored.w_opt_state[0], optax.TraceState)
  assert isinstance(restored.a_opt_state[0], optax.ScaleByAdamState)
  _assert_bitwise_equal(restored, state)


def test_async_save_round_trip(tmp_path):
  state = _state()
  with ck.Checkpointer(tmp_path, async_save=True) as c:
    assert c.save(5, state, {"a": 1}, force=True)
    c.wait()
    restored, extra, step = c.restore_latest(state)
  assert (step, extra) == (5, {"a": 1})
  _assert_bitwise_equal(restored, state)


def test_keeps_last_k(tmp_path):
  with ck.Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as c:
    for s in (1, 2, 3, 4):
      c.save(s, _state(step=s), {"s": s})
    assert c.all_steps() == [3, 4] and c.latest_step() == 4
  assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_should_save_cadence(tmp_path):
  with ck.Checkpointer(tmp_path, save_every_steps=3) as c:
    assert [s for s in range(10) if c.should_save(s)] == [0, 3, 6, 9]
    assert not c.save(4, _state())
    assert c.save(4, _state(), force=True)
    assert c.all_steps() == [4]
  with ck.Checkpointer(tmp_path, save_every_steps=0) as c:
    assert not any(c.should_save(s) for s in range(10))
  with pytest.raises(ValueError, match="max_to_keep"):
    ck.Checkpointer(tmp_path, max_to_keep=0)
  with pytest.raises(TypeError, match="JSON"):
    with ck.Checkpointer(tmp_path) as c:
      c.save(7, _state(), {"x": object()}, force=True)


def test_partially_written_step_is_ignored(tmp_path):
  _save_steps(tmp_path, [1, 2])
  # A crash between writing and the atomic rename leaves a tmp directory, here
  # even with complete-looking contents.
  tmp = tmp_path / "3.orbax-checkpoint-tmp-1700000000"
  shutil.copytree(tmp_path / "2", tmp)
  with ck.Checkpointer(tmp_path) as c:
    assert c.all_steps() == [1, 2]
    _, extra, step = c.restore_latest(_state())
    assert step == 2 and extra["epoch"] == 2
    # The step can be written again; the leftover is gone.
    assert c.save(3, _state(step=3), force=True)
    assert c.all_steps() == [1, 2, 3]
  assert not tmp.exists()


def _flip_noise_byte(step_dir):
  for path, i in _noise_files(step_dir):
    with open(path, "r+b") as fh:
      fh.seek(i)
      b = fh.read(1)
      fh.seek(i)
      fh.write(bytes([b[0] ^ 0x01]))


def _truncate_noise_file(step_dir):
  for path, _ in _noise_files(step_dir):
    with open(path, "r+b") as fh:
      fh.truncate(os.path.getsize(path) // 2)


def _delete_noise_file(step_dir):
  for path, _ in _noise_files(step_dir):
    os.remove(path)


def _garble_metadata(step_dir):
  with open(os.path.join(step_dir, "_CHECKPOINT_METADATA"), "w") as fh:
    fh.write("{not json")


@pytest.mark.parametrize("damage,reason", [
    (_flip_noise_byte, "checksum mismatch in params/noise"),  # only the CRC sees this
    (_truncate_noise_file, ""),
    (_delete_noise_file, ""),
    (_garble_metadata, ""),
])
def test_corrupt_latest_falls_back_and_is_moved_aside(tmp_path, caplog, damage, reason):
  _save_steps(tmp_path, [1, 2])
  damage(str(tmp_path / "2"))
  with caplog.at_level(logging.WARNING, logger="jdarts.checkpoint"):
    with ck.Checkpointer(tmp_path) as c:
      restored, extra, step = c.restore_latest(_state())
      assert step == 1 and extra == {"epoch": 1, "data": {"pos": [1, 2]}}
      _assert_bitwise_equal(restored, _state(step=1, shift=1.0))
      assert c.all_steps() == [1]
      # The resumed run can write step 2 again.
      assert c.save(2, _state(step=2), force=True)
      assert c.all_steps() == [1, 2]
  text = caplog.text
  assert "checkpoint step 2" in text and "corrupt" in text and reason in text
  assert "resuming from checkpoint step 1" in text
  moved = [n for n in os.listdir(tmp_path) if n.startswith("2.corrupt-")]
  assert len(moved) == 1 and f"moved aside to {tmp_path / moved[0]}" in text


def test_all_corrupt_raises(tmp_path, caplog):
  _save_steps(tmp_path, [1, 2])
  _flip_noise_byte(str(tmp_path / "1"))
  _delete_noise_file(str(tmp_path / "2"))
  with ck.Checkpointer(tmp_path) as c:
    with caplog.at_level(logging.WARNING, logger="jdarts.checkpoint"):
      with pytest.raises(ck.CheckpointCorruptError,
                         match=r"none of the checkpoints .*steps 1, 2.* can be restored"):
        c.restore_latest(_state())
  # Nothing is moved when there is nothing to resume from.
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]
  assert "checkpoint step 1" in caplog.text and "checkpoint step 2" in caplog.text


@pytest.mark.parametrize("template,match", [
    (_state(width=4), r"params/conv/kernel has shape \(2, 3\) there, \(2, 4\) here"),
    (_state().replace(alphas={"normal": jnp.zeros((3, 2)), "reduce": jnp.zeros((3, 2))}),
     r"alphas/reduce is missing from the checkpoint"),
    (_state().replace(step=jnp.asarray(0, jnp.float32)),
     r"step has dtype int32 there, float32 here"),
    (_state().replace(rng=jax.random.key(0, impl="rbg")),
     r"rng has shape \(2,\) there, \(4,\) here"),
])
def test_mismatched_template_names_the_leaf(tmp_path, template, match):
  _save_steps(tmp_path, [1])
  with ck.Checkpointer(tmp_path) as c:
    with pytest.raises(ck.CheckpointMismatchError, match=match):
      c.restore_latest(template)
    assert c.all_steps() == [1]  # a foreign checkpoint is not "corrupt": left in place


def test_preemption_flag_catches_sigterm_and_restores_handlers():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with ck.PreemptionFlag() as flag:
    assert flag.installed and not flag
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag.is_set and flag.signum == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM is only logged
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after a signal stops at once
  assert not flag.installed
  assert {s: signal.getsignal(s) for s in before} == before

  flag = ck.install_signal_handlers((signal.SIGTERM,))
  try:
    assert signal.getsignal(signal.SIGTERM) == flag._handle
  finally:
    flag.uninstall()
  assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
