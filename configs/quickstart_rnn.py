"""Offline quickstart: a small DARTS recurrent cell search on Python's own help texts.

    jdarts search --config=configs/quickstart_rnn.py --workdir=runs/quickstart_rnn

The text is `pydoc_data.topics` (ships with Python; ~60k training words,
2.3k-word vocabulary after rare words become <unk>; `jdarts.data.text`). The
space, dropouts, optimisers and update rules are the PTB search's (A.1.2,
configs/search_ptb.py); only the size is reduced: hidden 32, 8 nodes, BPTT
10, batch 16, 300 steps (0.8 epochs), eta_w 5 (20 is too large at this
size). A few minutes on 2 CPU cores.
Try `--config.arch.method=exact_hvp` for a second-order search.
"""
import importlib.util
import os


def _search_ptb():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "search_ptb.py")
  spec = importlib.util.spec_from_file_location("search_ptb", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  c = _search_ptb().get_config()
  c.data.name = "pydoc"
  c.model.hidden = 32
  c.model.bptt = 10
  c.batch_size = 16
  c.epochs = 2
  c.max_steps = 300
  c.log_every = 25
  c.checkpoint.every_steps = 100
  # A.1.2's eta_w = 20 is too large for hidden 32: the training loss does not
  # fall below uniform (ln 2336 = 7.8) in 300 steps; 5 learns.
  c.optim.learning_rate = 5.0
  return c
