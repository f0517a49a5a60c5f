"""The speed benchmarks' own logic: the virtual step they time, their tables and projections.

The timings themselves are not tested (speed goes in benchmarks/); what is
tested is that the benchmarks time the right computation and report it right.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import compile_profile  # noqa: E402
import depthwise_forms  # noqa: E402
import gpu_summary  # noqa: E402
import loop_convs  # noqa: E402
import pass_times  # noqa: E402
import search_step  # noqa: E402
import side_by_side  # noqa: E402

from jdarts import config_lib, schedules  # noqa: E402


def test_benchmark_arch_grad_uses_the_searchs_unclipped_virtual_step():
  # A quadratic "network" whose weight gradient is far above grad_clip=5: the
  # search's default virtual step ('reference') leaves the clip out, so the
  # benchmark's unrolled gradient must equal autodiff through
  # w' = w - lr (momentum * buf + g + wd * w) built by hand, not the clipped one.
  cfg = config_lib.search_defaults()
  sched = schedules.make_schedule(cfg.optim, 50, 100)
  A = jnp.asarray(np.random.RandomState(0).randn(3, 4), jnp.float32)
  loss_t = lambda w, a, b: 50.0 * jnp.sum((A @ w["w"] - a["a"] * b) ** 2)
  loss_v = lambda w, a, b: jnp.sum((A @ w["w"] + a["a"]) ** 2 * b)
  loss = lambda w, a, b: jnp.where(b[0] > 1, loss_t(w, a, b), loss_v(w, a, b))
  params = {"w": jnp.arange(4.0, dtype=jnp.float32)}
  alphas = {"a": jnp.asarray([0.1, -0.2, 0.3], jnp.float32)}
  tb, vb = jnp.full((3,), 2.0), jnp.full((3,), 0.5)
  w_opt = optax.chain(optax.clip_by_global_norm(cfg.optim.grad_clip),
                      optax.add_decayed_weights(cfg.optim.weight_decay),
                      optax.sgd(sched, momentum=cfg.optim.momentum))
  # A non-zero momentum buffer, as after some steps.
  state = w_opt.init(params)
  for _ in range(2):
    _, state = w_opt.update(jax.grad(loss)(params, alphas, tb), state, params)
  step = jnp.asarray(2, jnp.int32)
  grad = search_step.arch_grad_fn("unrolled", loss, cfg, sched)
  got = grad(params, alphas, tb, vb, state, step)["a"]

  lr, mom, wd = sched(step), cfg.optim.momentum, cfg.optim.weight_decay
  buf = state[2][0].trace["w"]

  g0 = jax.grad(loss)(params, alphas, tb)["w"]
  assert float(jnp.linalg.norm(g0)) > 10 * cfg.optim.grad_clip  # the clip would bite

  def val_after(a):
    g = jax.grad(loss)(params, {"a": a}, tb)["w"]
    w1 = params["w"] - lr * (mom * buf + g + wd * params["w"])
    return loss({"w": w1}, {"a": a}, vb)
  want = jax.grad(val_after)(alphas["a"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_gpu_summary_projects_search_and_training_hours():
  # 50 epochs x (25000 // 64 = 390 steps) x (100 + 50) ms = 2925 s.
  assert gpu_summary.search_hours(100.0, 50.0, 64) == pytest.approx(2925 / 3600)
  # 600 epochs x ceil(50000 / 96) = 521 steps x 200 ms.
  assert gpu_summary.train_hours(200.0, 96) == pytest.approx(600 * 521 * 0.2 / 3600)
  rows = [dict(kind=k, ms_per_step=ms, ms_min=ms - 1, images_per_s=64e3 / ms,
               compile_s=1.0, device_peak_mb=10.0, batch_size=64)
          for k, ms in (("weight", 50.0), ("arch_first_order", 100.0),
                        ("exact_hvp", 300.0))]
  table = gpu_summary.search_table(rows, 50, 25000)
  line = lambda label: next(l for l in table.splitlines() if l.startswith(f"| {label} "))
  assert line("first_order").endswith(f"| {2925 / 3600:.2f} |")
  assert line("exact_hvp").endswith(f"| {50 * 390 * 0.35 / 3600:.2f} |")
  assert "missing" in line("finite_difference")
  forms = gpu_summary.forms_table([dict(rows[0], depthwise="dense", lower_s=2.0),
                                   {"kind": "weight", "error": "child exited 124"}])
  assert forms.splitlines()[2:] == ["| weight, dense | 49.0 / 50.0 | 2.0 | 1.0 | 10 |"]


def test_gpu_summary_side_by_side_keys_batched_rows_apart():
  ref = [dict(kind="weight", ms_min=400.0, ms_per_step=420.0, peak_rss_mb=7000.0,
              torch="t")]
  search = [dict(kind="weight", ms_min=100.0, ms_per_step=110.0, batch_edges=False,
                 device_peak_mb=2000.0, backend="gpu", device="H", init_channels=16,
                 layers=8, batch_size=64, jax="j"),
            dict(kind="weight", ms_min=50.0, ms_per_step=55.0, batch_edges=True,
                 device_peak_mb=1000.0, backend="gpu", device="H")]
  lines = gpu_summary.side_by_side_table(ref, search, dict(setting="paper", commit="c",
                                                           peer_commit="p", date="d",
                                                           load0="0", load1="1",
                                                           load2="2")).splitlines()
  assert "device: H;" in lines[0] and "(C=16, 8 cells, batch 64)" in lines[0]
  per_edge = next(l for l in lines if l.startswith("| weight |"))
  batched = next(l for l in lines if l.startswith("| weight, batch_edges |"))
  assert "| 4.00x |" in per_edge and "| 7000 | 2000 |" in per_edge
  assert "| 8.00x |" in batched and "| 7000 | 1000 |" in batched


def test_pass_times_accounts_for_a_real_compile(tmp_path):
  """XLA's own pass log of one compile: the jitted module is found, its passes
  sum to more than nothing and to less than the compile's wall time (measured
  apart, in the child), and nested pipelines are not counted twice."""
  code = ("import time, jax, jax.numpy as jnp\n"
          "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0))\n"
          "l = f.lower(jnp.ones((64, 64)))\n"
          "t = time.perf_counter(); l.compile(); print('WALL', time.perf_counter() - t)\n")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="hlo_pass_pipeline=1",
             XLA_FLAGS="", JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert p.returncode == 0, p.stderr[-2000:]
  wall = float(next(l for l in p.stdout.splitlines() if l.startswith("WALL")).split()[1])
  times = pass_times.parse(p.stderr.splitlines())
  module = next(m for m in times if m.startswith("jit__lambda"))
  total = sum(times[module].values()) / 1e6
  assert 0 < total < wall
  # A nested pipeline is logged as a pass of its parent (the log has such lines):
  # dropped from the sums.
  lines = p.stderr.splitlines()
  pipelines = {m.group(3).strip() for m in map(pass_times._PIPELINE.match, lines) if m}
  logged = {m.group(2) for m in map(pass_times._PASS.match, lines) if m}
  assert logged & pipelines
  assert not any(name in pipelines for d in times.values() for name in d)
  log = tmp_path / "log"
  log.write_text(p.stderr)
  assert pass_times.main([str(log), "--top", "3"]) == 0
  empty = tmp_path / "empty"
  empty.write_text("nothing\n")
  assert pass_times.main([str(empty)]) == 1


def _fake_torch(cuda: bool, calls: list):
  """A stand-in for torch with only what `peer_cuda` touches (torch is no dependency)."""
  import types
  return types.SimpleNamespace(
      backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(benchmark=False)),
      cuda=types.SimpleNamespace(
          is_available=lambda: cuda, synchronize=lambda: calls.append("sync"),
          reset_peak_memory_stats=lambda: calls.append("reset"),
          get_device_name=lambda i: "FakeGPU",
          max_memory_allocated=lambda: 3 * 2**20))


def test_peer_cuda_runs_children_through_itself_and_moves_the_peer(monkeypatch):
  import types
  calls = []
  harness = "/h/bench_torch_darts.py"

  class Moved:
    def __init__(self, name):
      self.name = name

    def cuda(self):
      calls.append("cuda " + self.name)
      return self

  def build(args, cfg):
    peer = types.SimpleNamespace(model=Moved("model"), b=(Moved("x"), Moved("y")))
    return "torch", peer, ["harness patch"], 1.5

  def bench():
    return types.SimpleNamespace(
        child_cmd=lambda args, config, kind, mode: ["py", harness, "tree", "--kind", kind],
        build=build, timed=None, peak_rss_mb=lambda: 111.0)

  import peer_cuda
  adapter = os.path.abspath(peer_cuda.__file__)
  # Without CUDA: children run through the adapter, nothing else changes.
  monkeypatch.setitem(sys.modules, "torch", _fake_torch(False, calls))
  b = bench()
  peer_cuda.patch_for_cuda(b, harness)
  assert b.child_cmd(None, "paper", "weight", "child") == [
      "py", adapter, "--bench", harness, "tree", "--kind", "weight"]
  assert b.build is build and b.timed is None and b.peak_rss_mb() == 111.0 and not calls
  # With CUDA: model and batches moved, every timed step synchronised on both
  # sides, the peak read from the CUDA allocator, and all of it declared.
  fake = _fake_torch(True, calls)
  monkeypatch.setitem(sys.modules, "torch", fake)
  b = bench()
  peer_cuda.patch_for_cuda(b, harness)
  assert fake.backends.cudnn.benchmark is True
  _, peer, patches, build_s = b.build(None, None)
  assert calls == ["cuda model", "cuda x", "cuda y", "reset"] and build_s == 1.5
  assert patches[0] == "harness patch" and "FakeGPU" in patches[1]
  calls.clear()
  b.timed(lambda: calls.append("step"))
  assert calls == ["sync", "step", "sync"]
  assert b.peak_rss_mb() == 3.0


def test_side_by_side_table_ratios_and_failures():
  ref = {"weight": dict(ms_min=1000.0, ms_per_step=1200.0, peak_rss_mb=900.0),
         "arch_first": dict(ms_min=1200.0, ms_per_step=1300.0, peak_rss_mb=950.0),
         "arch_second": {"error": "exit 1"}}
  ours = {("weight", "default"): dict(ms_min=500.0, ms_per_step=800.0, compile_s=20.0,
                                     compile_cpu_s=30.0, compile_peak_rss_mb=2000.0,
                                     run_peak_rss_mb=700.0),
          ("weight", "batch_edges"): dict(ms_min=400.0, ms_per_step=400.0)}
  meta = dict(setting="tiny", C=2, layers=3, batch=2, date="d", cpu="c", threads=2,
              peer_commit="p", torch="t", commit="x", jax="j", load0="0", load1="1", load2="2")
  lines = side_by_side.table(ref, ours, meta, ["default", "batch_edges"]).splitlines()
  weight = next(l for l in lines if l.startswith("| weight |"))
  batched = next(l for l in lines if l.startswith("| weight, batch_edges |"))
  assert "| 2.50x | 3.00x |" in batched
  assert sum(l.startswith("| first-order") for l in lines) == 2
  assert "| 2.00x | 1.50x |" in weight and "| 20 / 30 |" in weight
  assert "| 2000 / 700 |" in weight
  first = next(l for l in lines if l.startswith("| first-order"))
  assert "| - / - | - | - |" in first  # ours missing: no ratio invented
  assert lines[-1].startswith("Failed: arch_second: exit 1")


def test_side_by_side_whole_step_sums_the_reference_kinds():
  """A whole search step is set against the reference's architecture step plus its
  weight step: times summed, the larger peak; a missing part gives no figure."""
  ref = {"weight": dict(ms_min=600.0, ms_per_step=700.0, peak_rss_mb=900.0),
         "arch_second": dict(ms_min=2400.0, ms_per_step=2600.0, peak_rss_mb=1800.0)}
  ours = {("search_finite_difference", "default"): dict(ms_min=1500.0, ms_per_step=1650.0),
          ("search_exact_hvp", "default"): dict(ms_min=1000.0, ms_per_step=1000.0)}
  meta = dict(setting="tiny", C=2, layers=3, batch=2, date="d", cpu="c", threads=2,
              peer_commit="p", torch="t", commit="x", jax="j", load0="0", load1="1", load2="2")
  rows = [r for r in side_by_side.ROWS if r[0].startswith("search_")]
  lines = side_by_side.table(ref, ours, meta, rows=rows).splitlines()
  fd = next(l for l in lines if l.startswith("| whole search step, finite"))
  assert "| 3000 / 3300 | 1500 / 1650 | 2.00x | 2.00x |" in fd and "| 1800 |" in fd
  del ref["weight"]
  lines = side_by_side.table(ref, ours, meta, rows=rows).splitlines()
  exact = next(l for l in lines if l.startswith("| whole search step, exact"))
  assert "| - / - | 1000 / 1000 | - | - |" in exact


def test_side_by_side_refuses_missing_torch_venv(tmp_path):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "side_by_side.py"),
                      f"--ptv={tmp_path}", f"--peer={tmp_path}"], capture_output=True,
                     text=True)
  assert p.returncode != 0
  assert p.stderr.strip().splitlines()[-1].startswith("side_by_side: error: --ptv has no")


@pytest.mark.parametrize("args, says", [
    (["--budget", "ten"], "--budget takes whole seconds"),
    (["--peer", "nowhere", "--bench", "nothing.py"], "--peer needs a quark0/darts tree"),
    (["--out"], "--out needs a value"),
    (["--forms", "dense,bogus"], "unknown depthwise form 'bogus'"),
    (["--frob"], "unknown argument '--frob'")])
def test_gpu_suite_refuses_bad_arguments_before_any_work(tmp_path, args, says):
  # Refused before the output folder is made or anything is imported or timed.
  p = subprocess.run([os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), *args],
                     capture_output=True, text=True, cwd=tmp_path,
                     env=dict(os.environ, OUT=str(tmp_path / "out")))
  assert p.returncode == 2
  assert p.stderr.startswith("gpu_suite: error: ") and says in p.stderr, p.stderr
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_suite_tiny_on_cpu(tmp_path):
  out = tmp_path / "suite"
  env = dict(os.environ, SEARCH_FLAGS="--primitives=none,skip_connect,sep_conv_3x3",
             TRAIN_FLAGS="--auxiliary=0", XLA_FLAGS="", PYTHON=sys.executable)
  p = subprocess.run([os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--tiny",
                      f"--out={out}"], capture_output=True, text=True, env=env)
  assert p.returncode == 0, p.stderr + (out / "log.txt").read_text()
  search = [json.loads(l) for l in (out / "search.jsonl").read_text().splitlines()]
  assert [r["kind"] for r in search] == ["weight", "arch_first_order", "exact_hvp",
                                         "finite_difference"]
  train = [json.loads(l) for l in (out / "train.jsonl").read_text().splitlines()]
  assert [(r["backend_wrapper"], r["dtype"]) for r in train] == [
      ("pmap", "float32"), ("pmap", "bfloat16"), ("shard_map", "float32"),
      ("shard_map", "bfloat16")]
  summary = (out / "summary.md").read_text()
  assert "missing" not in summary and summary.count("\n| ") >= 10


def test_depthwise_forms_compute_the_depthwise_convolution():
  """Every form the benchmark times is a depthwise convolution: against a direct
  per-channel sum of shifted products (numpy), both kernels of the DARTS cell."""
  rng = np.random.RandomState(0)
  x = rng.randn(2, 6, 6, 8).astype(np.float32)
  for k, pad, dil in ((5, 2, 1), (3, 2, 2)):
    w = rng.randn(k, k, 1, 8).astype(np.float32)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    want = sum(xp[:, i * dil:i * dil + 6, j * dil:j * dil + 6, :] * w[i, j, 0]
               for i in range(k) for j in range(k))
    for name in ("dense", "fused", "xla", "shift", "blocks4", "grouped4"):
      got = depthwise_forms.form_fn(name, pad, dil, 8)(jnp.asarray(x), jnp.asarray(w))
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4, err_msg=name)
  assert depthwise_forms.form_fn("blocks8", 2, 1, 8) is None  # one block: dense itself


def test_compile_profile_attributes_kernels_to_modules():
  hlo = """HloModule m

%fused (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  ROOT %n = f32[2]{0} negate(%p), metadata={op_name="jit(f)/jvp(Net)/cell_0/BatchNorm_3/sub"}
}

ENTRY %main (a: f32[2]) -> f32[2] {
  %a = f32[2]{0} parameter(0)
  %f1 = f32[2]{0} fusion(%a), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/jvp(Net)/cell_0/BatchNorm_3/sub"}
  %f2 = f32[2]{0} fusion(%f1), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/transpose(jvp(Net))/cell_1/MixedOp_2/BatchNorm_0/mul"}
  %f3 = f32[2]{0} fusion(%f2), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/transpose(jvp(Net))/cell_1/BatchNorm_1/add"}
  %b = f32[2]{0} bitcast(%f3)
  %f5 = (f32[2]{0}, f32[2]{0}) fusion(%b), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/transpose(jvp(Net))/cell_1/BatchNorm_1/mul"}
  %g = f32[2]{0} get-tuple-element(%f5), index=0
  ROOT %f4 = f32[2]{0} fusion(%g), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/add"}
}
"""
  # A multi-output fusion (tuple shape, spaces in it) is a kernel too.
  assert compile_profile.kernel_sources(hlo) == [
      ("BatchNorm", "bwd", 3), ("BatchNorm", "fwd", 1), ("top:add", "fwd", 1)]


def test_step_profile_attributes_run_time_to_modules(tmp_path):
  import glob

  import flax.linen as nn

  import step_profile

  class Probe(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = nn.Conv(8, (3, 3), name="Conv_0")(x)
      return jnp.mean(jnp.tanh(y) ** 2)

  x = jnp.asarray(np.random.RandomState(0).randn(4, 16, 16, 3), jnp.float32)
  params = Probe().init(jax.random.PRNGKey(0), x)
  compiled = jax.jit(jax.grad(lambda p, x: Probe().apply(p, x))).lower(params, x).compile()
  jax.block_until_ready(compiled(params, x))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(2):
      out = compiled(params, x)
    jax.block_until_ready(out)
  path = glob.glob(str(tmp_path / "**" / "*.xplane.pb"), recursive=True)[0]
  times = step_profile.kernel_times(path)
  sources = step_profile.instruction_sources(compiled.as_text())
  # Every kernel the runtime ran is an instruction of this program.
  assert times and set(times) <= set(sources), set(times) - set(sources)
  rows = step_profile.aggregate(times, sources, steps=2)
  assert {("Conv", "fwd"), ("Conv", "bwd")} <= {(r["module"], r["pass"]) for r in rows}
  total_ns = sum(ns for ns, _ in times.values())
  assert sum(r["ms"] for r in rows) == pytest.approx(total_ns / 2e6, rel=1e-2, abs=0.05)
  assert sum(r["count"] for r in rows) == pytest.approx(sum(n for _, n in times.values()) / 2,
                                                         abs=len(rows))
  assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)


def test_step_profile_gives_unnamed_copies_their_operands_source():
  import step_profile

  hlo = """HloModule m

ENTRY %main (a: f32[2]) -> (f32[2], f32[2]) {
  %a = f32[2]{0} parameter(0)
  %f2 = f32[2]{0} fusion(%a), kind=kLoop, calls=%fused, metadata={op_name="jit(f)/transpose(jvp(Net))/cell_1/MixedOp_2/mul"}
  %transpose_copy_fusion.3 = f32[2]{0} fusion(%f2), kind=kLoop, calls=%fused2
  %orphan = f32[2]{0} copy(%a)
  ROOT %t = (f32[2]{0}, f32[2]{0}) tuple(%transpose_copy_fusion.3, %orphan)
}
"""
  sources = step_profile.instruction_sources(hlo)
  assert sources["f2"] == ("MixedOp", "bwd")
  assert sources["transpose_copy_fusion.3"] == ("<-MixedOp", "bwd")
  assert sources["orphan"] == ("?", "fwd")
  rows = step_profile.aggregate({"f2": [3e6, 1], "transpose_copy_fusion.3": [1e6, 1],
                                 "orphan": [2e6, 1]}, sources)
  assert [(r["kind"], r["module"], r["ms"]) for r in rows] == [
      ("f2", "MixedOp", 3.0), ("orphan", "?", 2.0), ("transpose_copy_fusion", "<-MixedOp", 1.0)]
  assert step_profile.by_module(rows) == [("MixedOp", 4.0), ("?", 2.0)]


@pytest.mark.parametrize("k,strides,padding,dilation", [
    (3, (2, 2), ((1, 1), (1, 1)), (1, 1)),
    (5, (1, 2), ((4, 3), (2, 4)), (2, 1)),   # asymmetric: every padding formula used
    (1, (2, 2), ((0, 0), (0, 0)), (1, 1)),   # FactorizedReduce's 1x1, stride 2
])
def test_loop_convs_canonical_conv_has_xlas_gradients_to_second_order(k, strides, padding,
                                                                      dilation):
  # The benchmark's canonical-layout convolution must be the same function as
  # lax.conv_general_dilated with the same gradients (kernel and input) and the
  # same forward-over-reverse products, or its timings compare different work.
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 9, 10, 3), jnp.float32)
  w = jnp.asarray(rng.randn(k, k, 3, 4), jnp.float32)
  v = jnp.asarray(rng.randn(k, k, 3, 4), jnp.float32)
  conf = (strides, padding, dilation)
  loss = lambda conv: lambda w, x: jnp.sum(jnp.sin(conv(x, w, *conf)) ** 2)
  ours, ref = loss(loop_convs.canonical_conv), loss(loop_convs._xla_conv)
  np.testing.assert_allclose(loop_convs.canonical_conv(x, w, *conf),
                             loop_convs._xla_conv(x, w, *conf), rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.grad(ours, (0, 1))(w, x), jax.grad(ref, (0, 1))(w, x)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for wrt in (0, 1):  # d/dw of the kernel and of the input gradient (the exact HVP's form)
    hv = lambda f: jax.jvp(lambda w: jax.grad(f, wrt)(w, x), (w,), (v,))[1]
    np.testing.assert_allclose(hv(ours), hv(ref), rtol=1e-4, atol=1e-4)


def test_search_step_times_the_whole_step_a_search_runs():
  # search_* kinds time the library's step through ParallelStep: a staged step's
  # programs, the caller's state left intact (donation works on a copy).
  import test_staged
  from jdarts import config_lib, search
  state, _, batches = test_staged._problem("finite_difference", "bilevel")
  state = jax.device_put(state)
  space, cfg, w_opt, a_opt, sched = test_staged._setup()
  rows = [search_step.measure_search_step(space, cfg, w_opt, a_opt, sched, state, batches[0],
                                          batches[1], "finite_difference", kind, repeats=2,
                                          release=False) for kind in ("staged_bilevel", "auto")]
  cfg.arch.method = "finite_difference"
  assert [r["step_kind"] for r in rows] == ["staged_bilevel", search.step_kind_for(cfg.arch)]
  for r in rows:
    assert r["ms_min"] > 0 and len(r["step_ms"]) == 2
    assert r["first_call_s"] >= r["compile_s"] > 0
  # Each stage compiled as a program of its own, and its seconds within the first call.
  staged_programs = rows[0]["programs"]
  assert ({"jit(grad)", "jit(val)", "jit(point)", "jit(alphas)", "jit(update)"}
          <= set(staged_programs))
  assert sum(sum(p.values()) for p in staged_programs.values()) <= rows[0]["first_call_s"]
  assert not jax.tree_util.tree_leaves(state.params)[0].is_deleted()
