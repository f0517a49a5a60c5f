"""See the search: TensorBoard events, arch statistics, progress lines, plots and the report.

One tiny DARTS CNN search (8x8 digits, 1-node cells, 3 short epochs)
runs once for the module; the tests read its workdir.
"""
import io
import json
import math

import numpy as np
import pytest

import helpers
from jdarts import arch_stats
from jdarts import genotypes
from jdarts import search_loop
from jdarts.progress import progress_bar


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  d = tmp_path_factory.mktemp("viz")
  cfg = helpers.tiny_search_config(str(d / "xla_cache"), max_steps=6, epochs=3)
  cfg.data.train_portion = 0.01   # a step or two of 8 rows per epoch
  cfg.data.augment = False
  cfg.checkpoint.enabled = False
  cfg.collapse.every_epochs = 1   # eigenvalue by power iteration and the explicit spectrum
  cfg.collapse.spectrum = True
  cfg.collapse.power_iters = 200
  cfg.collapse.tol = 1e-7
  search_loop.run(cfg, str(d / "run"))
  return d / "run"


def _rows(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _events_equal_rows(workdir):
  """Reads workdir/tb with TensorBoard's own reader; every numeric row value is there."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(workdir / "tb"),
                                           size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  n = 0
  for row in _rows(workdir):
    for k, v in row.items():
      if k in ("step", "kind", "time") or not isinstance(v, float):
        continue
      events = {e.step: e.value for e in acc.Scalars(f"{row['kind']}/{k}")}
      assert events[row["step"]] == pytest.approx(v, rel=1e-6, abs=1e-30), (row["kind"], k)
      n += 1
  return acc, n


def test_tensorboard_events_hold_the_logged_rows(workdir):
  acc, n = _events_equal_rows(workdir)
  tags = set(acc.Tags()["scalars"])
  assert n > 20 and "train/train_loss" in tags and "arch/normal_num_parameter_free" in tags
  texts = acc.Tensors("genotype")
  assert len(texts) == 3  # one per epoch
  last = texts[-1].tensor_proto.string_val[0].decode()
  geno = genotypes.genotype_from_json(json.loads((workdir / "genotype.json").read_text()))
  assert last == genotypes.format_genotype(geno)


def test_arch_rows_hold_entropy_and_genotype_counts(workdir):
  arch = [r for r in _rows(workdir) if r["kind"] == "arch"]
  final = next(r["step"] for r in _rows(workdir) if r["kind"] == "final")
  assert [r["step"] for r in arch] == list(range(1, final + 1))  # log_every=1
  hist = [json.loads(l) for l in (workdir / "alpha_history.jsonl").read_text().splitlines()]
  for h in hist:  # the epoch rows: entropy of the epoch's alphas, counts of its genotype
    row = next(r for r in arch if r["step"] == h["step"])
    for name in ("normal", "reduce"):
      a = np.asarray(h["alphas"][name], np.float64)
      p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
      assert row[f"alpha_entropy/{name}"] == pytest.approx(
          float(np.mean([-sum(q * math.log(q) for q in e) for e in p])), rel=1e-9)
      ops = [op for op, _ in h["genotype"][name]]
      assert row[f"{name}_num_skip_connect"] == ops.count("skip_connect")
      assert row[f"{name}_num_parameter_free"] == sum(
          op in ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect") for op in ops)


def test_alpha_entropy_and_darts_v2_counts_by_hand():
  ent = arch_stats.alpha_entropy({"a": np.zeros((3, 8)), "b": {"c": np.array([[0., 1e4]])}})
  assert ent["alpha_entropy/a"] == pytest.approx(math.log(8))
  assert ent["alpha_entropy/b/c"] == pytest.approx(0.0, abs=1e-9)
  from jdarts.spaces.darts_cnn.space import DartsCNNSpace
  stats = DartsCNNSpace.genotype_stats(DartsCNNSpace.__new__(DartsCNNSpace), genotypes.DARTS_V2)
  assert stats == {"normal_num_skip_connect": 2, "normal_num_parameter_free": 2,
                   "reduce_num_skip_connect": 3, "reduce_num_parameter_free": 8}


def test_progress_without_a_tty_prints_lines_not_carriage_returns():
  out = io.StringIO()  # isatty() is False, like a redirected stdout
  bar = progress_bar(50, 0, True, "search", stream=out)
  bar.every_s = 0.0
  for _ in range(50):
    bar.set_postfix({"train_loss": "1.234"})
    bar.update(1)
  bar.write("epoch 1 genotype: ...")
  bar.close()
  text = out.getvalue()
  assert "\r" not in text and "\x1b" not in text
  lines = text.splitlines()
  assert lines[0].startswith("search: step 1/50") and "train_loss=1.234" in lines[0]
  assert "step 50/50 (100%" in lines[-2] and lines[-1] == "epoch 1 genotype: ..."


def test_plain_progress_takes_tqdm_postfix_calls():
  """The loops call set_postfix as tqdm allows: a dict, keywords, or both."""
  out = io.StringIO()
  bar = progress_bar(2, 0, True, "train", stream=out)
  bar.every_s = 0.0
  bar.set_postfix(loss="1.000", acc="0.500", refresh=False)
  bar.update(1)
  bar.set_postfix({"train_loss": "2.000"}, img_s="7")
  bar.update(1)
  lines = out.getvalue().splitlines()
  assert lines[0].endswith(" loss=1.000 acc=0.500"), lines
  assert lines[1].endswith(" train_loss=2.000 img_s=7"), lines


def test_progress_on_a_tty_is_tqdm():
  class Tty(io.StringIO):
    def isatty(self):
      return True
  bar = progress_bar(5, 0, True, "search", stream=Tty())
  assert type(bar).__module__.startswith("tqdm")
  bar.close()


def test_darts_v2_dot_graph_has_the_right_nodes_and_edges():
  from jdarts import viz
  g = genotypes.genotype_to_json(genotypes.DARTS_V2)
  nodes, _ = viz.genotype_cells(g)["normal"]
  dot = viz.to_dot("normal", nodes, viz.genotype_cells(g)["normal"][1])
  assert nodes == ["c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"]
  for n in nodes:
    assert f'"{n}";' in dot
  # By hand from the paper's fig. 4 (DARTS V2 normal cell).
  assert sorted(viz.parse_dot_edges(dot)) == sorted([
      ("c_{k-2}", "0", "sep_conv_3x3"), ("c_{k-1}", "0", "sep_conv_3x3"),
      ("c_{k-2}", "1", "sep_conv_3x3"), ("c_{k-1}", "1", "sep_conv_3x3"),
      ("c_{k-1}", "2", "sep_conv_3x3"), ("c_{k-2}", "2", "skip_connect"),
      ("c_{k-2}", "3", "skip_connect"), ("0", "3", "dil_conv_3x3"),
      ("0", "c_{k}", ""), ("1", "c_{k}", ""), ("2", "c_{k}", ""), ("3", "c_{k}", "")])
  _, reduce_edges = viz.genotype_cells(g)["reduce"]
  assert sorted(reduce_edges)[:3] == [("0", "1", "skip_connect"), ("0", "2", "skip_connect"),
                                      ("0", "3", "skip_connect")]
  assert len(reduce_edges) == 12


def test_plot_command_draws_the_workdir(workdir, capsys):
  from jdarts import cli, viz
  assert cli.main(["plot", f"--workdir={workdir}"]) == 0
  plots = workdir / "plots"
  names = {p.name for p in plots.iterdir()}
  expected = {"alpha_evolution_normal.png", "alpha_evolution_reduce.png", "alphas_normal.png",
              "alphas_reduce.png", "cell_normal.dot", "cell_reduce.dot", "cell_normal.png",
              "cell_reduce.png", "lr.png", "loss.png", "arch.png", "collapse.png"}
  assert expected <= names, expected - names
  for n in names:
    if n.endswith(".png"):
      assert (plots / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  geno = json.loads((workdir / "genotype.json").read_text())
  edges = viz.parse_dot_edges((plots / "cell_normal.dot").read_text())
  assert [(s, d) for s, d, l in edges if l] == [
      (("c_{k-2}", "c_{k-1}")[j], "0") for _, j in geno["normal"]]
  assert cli.main(["plot", f"--workdir={workdir / 'nothing'}"]) == 2
  assert "holds no search results" in capsys.readouterr().err


def test_search_writes_a_report(workdir):
  text = (workdir / "report.md").read_text()
  for part in ("## Config", "| space | darts_cnn |", "| data.name | digits |",
               "wall time:", "compilation included:", "throughput:", "images/s",
               "## Final genotype", "normal_num_parameter_free", "## Evaluation network",
               "`cifar` network, init_channels=36, layers=20", "parameters:",
               "![alpha_evolution_normal](plots/alpha_evolution_normal.png)",
               "![cell_normal](plots/cell_normal.png)", "tensorboard --logdir"):
    assert part in text, part
  geno = genotypes.genotype_from_json(json.loads((workdir / "genotype.json").read_text()))
  assert genotypes.format_genotype(geno) in text
  # The count `jdarts summary` gives for this genotype's network (independent path).
  from jdarts import summary, train_config
  c = train_config.train_defaults()
  c.data.name, c.model.auxiliary = "digits", False
  params = summary.summarize_eval(c, geno)["params"]
  assert f"parameters: {params:,} " in text
  for link in text.split("](")[1:]:
    target = link.split(")")[0]
    if not target.startswith("http"):
      assert (workdir / target).exists(), target


def test_collapse_rows_match_the_explicit_spectrum(workdir):
  rows = [r for r in _rows(workdir) if r["kind"] == "collapse"]
  assert len(rows) == 3  # every epoch
  for r in rows:
    dominant = max(r["max_eigenvalue"], r["min_eigenvalue"], key=abs)
    assert r["dominant_eigenvalue"] == pytest.approx(dominant, rel=2e-2), r
    assert r["top_eigenvalue"] == pytest.approx(r["max_eigenvalue"], rel=5e-2, abs=2e-3), r


def test_nb201_and_recurrent_cell_graphs_by_hand():
  from jdarts import viz
  nodes, edges = viz.genotype_cells(
      {"arch": "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|none~1|nor_conv_1x1~2|",
       "skip_connect": 1})["cell"]
  assert nodes == ["0", "1", "2", "3"]
  assert edges == [("0", "1", "nor_conv_3x3"), ("0", "2", "skip_connect"),
                   ("1", "2", "avg_pool_3x3"), ("0", "3", "none"), ("1", "3", "none"),
                   ("2", "3", "nor_conv_1x1")]
  nodes, edges = viz.genotype_cells({"recurrent": [["sigmoid", 0], ["relu", 1]],
                                     "concat": [1, 2]})["recurrent"]
  assert nodes == ["x_{t}", "h_{t-1}", "0", "1", "2", "h_{t}"]
  assert edges == [("x_{t}", "0", ""), ("h_{t-1}", "0", ""), ("0", "1", "sigmoid"),
                   ("1", "2", "relu"), ("1", "h_{t}", "avg"), ("2", "h_{t}", "avg")]
  assert viz.genotype_cells({"channels": [3, 8], "primitives": ["x"], "score": 1.0}) == {}


def test_train_runs_write_the_same_events(tmp_path):
  import os
  from jdarts import cli
  genotypes.save_genotype(genotypes.genotype_from_json(
      {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2],
       "reduce": [["max_pool_3x3", 0], ["sep_conv_3x3", 1]], "reduce_concat": [2]}),
      str(tmp_path / "genotype.json"))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  assert cli.main(["train", f"--config={repo}/configs/train_quickstart.py",
                   f"--config.genotype={tmp_path / 'genotype.json'}",
                   "--config.model.init_channels=4", "--config.model.layers=1",
                   "--config.model.stem_multiplier=1", "--config.batch_size=8",
                   "--config.max_steps=3", "--config.log_every=1", "--config.progress=False",
                   "--config.checkpoint.enabled=False", "--config.parallel.num_devices=1",
                   f"--config.compilation_cache_dir={tmp_path / 'cache'}",
                   f"--workdir={tmp_path / 'run'}"]) == 0
  acc, n = _events_equal_rows(tmp_path / "run")
  assert n >= 9 and "train/loss" in acc.Tags()["scalars"]


def test_a_resumed_run_purges_what_the_killed_run_logged_after_the_checkpoint(tmp_path):
  """A run killed after step 4, resumed from the checkpoint of step 2, logs 3.. again.

  TensorBoard's reader must show the resumed run's values only, including for a
  tag the resumed run has not logged again yet ('epoch/x' at step 4): that tag
  is what the START event (`TensorBoardWriter.resumed`) is for.
  """
  import time
  from tensorboard.backend.event_processing import event_accumulator
  from jdarts import event_writer
  first = event_writer.TensorBoardWriter(str(tmp_path))
  for step in range(1, 5):
    first.write(step, "train", {"loss": float(step)})
  first.write(4, "epoch", {"x": 1.0})
  first.close()
  time.sleep(1.1)  # event files are named, and read, by their creation second
  second = event_writer.MultiWriter([event_writer.TensorBoardWriter(str(tmp_path))])
  second.resumed(2)
  second.write(3, "train", {"loss": 30.0})
  second.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 2.0),
                                                                    (3, 30.0)]
  # The purge empties the tag (the reader keeps its name).
  tags = acc.Tags()["scalars"]
  assert "epoch/x" not in tags or not acc.Scalars("epoch/x")
