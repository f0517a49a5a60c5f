"""Text corpora and the recurrent search through `jdarts search` (issue 13).

Data: vocabulary and batchify as the reference (quark0/darts rnn/data.py,
rnn/utils.py) on small files written here; resumable BPTT streams; the
one-line error for missing files. Search: a tiny darts_rnn search on the
offline 'pydoc' corpus stopped and resumed ends where an uninterrupted one
ends, carries included.
"""
import json
import os

import numpy as np
import pytest

from jdarts import cli, data
from jdarts.data import text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_PTB = os.path.join(ROOT, "configs", "search_ptb.py")


def _write_ptb(d):
  (d / "ptb.train.txt").write_text(" a b c \n b c d\n\n")
  (d / "ptb.valid.txt").write_text("d e\n")
  (d / "ptb.test.txt").write_text("a f\n")


def test_vocabulary_and_ids_as_the_reference(tmp_path):
  _write_ptb(tmp_path)
  c = text.load_corpus("ptb", str(tmp_path))
  # Words in order of first appearance over train, valid, test; <eos> ends every line.
  assert c.words == ["a", "b", "c", "<eos>", "d", "e", "f"]
  w = lambda ids: [c.words[i] for i in ids]
  assert w(c.train) == ["a", "b", "c", "<eos>", "b", "c", "d", "<eos>", "<eos>"]
  assert w(c.valid) == ["d", "e", "<eos>"] and w(c.test) == ["a", "f", "<eos>"]
  assert data.get_info("ptb").vocab_size == 10000
  assert data.get_info("wikitext2").vocab_size == 33278


def test_batchify_streams_and_eval_batches():
  ids = np.arange(23, dtype=np.int32)
  d = text.batchify(ids, 4)            # 3 tokens dropped; row b = tokens [5b, 5b + 5)
  np.testing.assert_array_equal(d, np.arange(20).reshape(4, 5))
  s = text.BPTTStream(d, 2)
  assert s.segments == 2 and s.steps_per_epoch == 2
  b0 = next(s)
  np.testing.assert_array_equal(b0["inputs"], d[:, 0:2])
  np.testing.assert_array_equal(b0["targets"], d[:, 1:3])
  state = s.get_state()
  ahead = [next(s)["inputs"] for _ in range(3)]   # cycles after 2 segments
  s2 = text.BPTTStream(d, 2)
  s2.set_state(json.loads(json.dumps(state)))
  for a in ahead:
    np.testing.assert_array_equal(next(s2)["inputs"], a)
  with pytest.raises(data.DataError, match="differs from this run"):
    text.BPTTStream(d, 3).set_state(state)
  # Every target of a split exactly once, in order; padding masked out.
  batches = list(text.eval_batches(d, 3))
  got = np.concatenate([b["targets"][:, :int(b["token_mask"][0].sum())] for b in batches], 1)
  np.testing.assert_array_equal(got, d[:, 1:])
  assert all("deterministic" in b for b in batches)


def test_missing_files_give_one_line(tmp_path, capsys):
  with pytest.raises(data.DatasetNotFoundError) as e:
    text.load_corpus("wikitext2", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens" in msg
  assert cli.main(["search", f"--config={SEARCH_PTB}", f"--workdir={tmp_path / 'w'}",
                   f"--config.data.data_dir={tmp_path}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "ptb.train.txt, ptb.valid.txt, ptb.test.txt" in err[0], err


def test_pydoc_corpus_is_deterministic_and_offline():
  a, b = text.pydoc_lines(), text.pydoc_lines()
  assert a == b and all(len(p) > 100 for p in a)
  c = text.load_corpus("pydoc")
  assert {"<eos>", "<unk>"} <= set(c.words) and len(c.train) > 50000
  assert data.get_info("pydoc").vocab_size == len(c.words)


_CONFIG = '''import importlib.util


def get_config():
  spec = importlib.util.spec_from_file_location("search_ptb", {search_ptb!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.name = "pydoc"
  c.model.hidden, c.model.steps, c.model.bptt = 8, 2, 5
  c.batch_size, c.max_steps, c.log_every = 4, 4, 2
  c.checkpoint.every_steps = 2
  c.progress = False
  c.parallel.num_devices = 1
  c.compilation_cache_dir = {cache!r}
  return c
'''


def _rows(workdir):
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_sec")}
          for r in rows if r["kind"] == "train"]


@pytest.mark.parametrize("method", ["first_order",
                                    pytest.param("exact_hvp", marks=pytest.mark.slow)])
def test_cli_search_resume_equals_uninterrupted(tmp_path, capsys, method):
  config = tmp_path / "rnn.py"
  config.write_text(_CONFIG.format(search_ptb=SEARCH_PTB, cache=str(tmp_path / "xla")))
  run = lambda wd, n: cli.main(["search", f"--config={config}", f"--workdir={wd}",
                                f"--config.arch.method={method}", f"--config.max_steps={n}"])
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  assert run(whole, 4) == 0
  assert run(parts, 2) == 0
  half = json.loads((parts / "alphas.json").read_text())["recurrent"]
  assert run(parts, 4) == 0
  out = capsys.readouterr().out
  a_whole = np.asarray(json.loads((whole / "alphas.json").read_text())["recurrent"])
  a_parts = np.asarray(json.loads((parts / "alphas.json").read_text())["recurrent"])
  np.testing.assert_array_equal(a_parts, a_whole)
  assert np.abs(a_parts - np.asarray(half)).max() > 0, "the resumed steps moved nothing"
  assert _rows(parts) == _rows(whole) and [r["step"] for r in _rows(parts)] == [2, 4]
  summary = json.loads((parts / "summary.json").read_text())
  assert summary["test_perplexity"] == pytest.approx(np.exp(summary["test_loss"]))
  genotype = json.loads((parts / "genotype.json").read_text())
  assert [e[1] for e in genotype["recurrent"]][0] == 0 and genotype["concat"] == [1, 2]
  assert "supernet test perplexity" in out
