"""Offline quickstart: train a recurrent cell's language model on Python's help texts.

    jdarts train --config=configs/train_quickstart_rnn.py --workdir=runs/train_quickstart_rnn \
        --config.genotype=runs/quickstart_rnn/genotype.json

The PTB evaluation settings (configs/train_ptb.py, A.2.2) at quickstart size
(the search's, configs/quickstart_rnn.py): hidden 32, BPTT 10 (random
lengths up to 15, all padded to 15: one compilation), batch 16, 4 epochs,
learning rate 5 (20 diverges at this size).
The genotype is a published cell (DARTS_V2 by default) or a search's
genotype.json.
"""
import importlib.util
import os


def get_config(arg: str = ""):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_ptb.py")
  spec = importlib.util.spec_from_file_location("train_ptb", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.data.name = "pydoc"
  c.model.hidden, c.model.bptt = 32, 10
  c.data.max_seq_len_delta, c.data.length_bucket = 5, 15
  c.data.eval_batch_size = c.data.test_batch_size = 10
  c.batch_size, c.epochs, c.log_every = 16, 4, 50
  c.nonmono = 1
  # A.2.2's eta_w = 20 diverges (NaN after ~900 steps) at hidden 32 with a
  # relu/identity cell; 5 trains steadily.
  c.optim.learning_rate = 5.0
  return c
