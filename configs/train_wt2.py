"""Train a recurrent cell's language model on WikiText-2 (Liu et al. 2019, A.2.4).

    jdarts train --config=configs/train_wt2.py --config.data.data_dir=DIR --workdir=runs/wt2

DIR holds wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens. As the PTB
config (configs/train_ptb.py) except where A.2.4 says otherwise.
"""
import importlib.util
import os


def get_config(arg: str = ""):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_ptb.py")
  spec = importlib.util.spec_from_file_location("train_ptb", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.data.name = "wikitext2"
  c.model.hidden = 700                # A.2.4: "embedding and hidden sizes 700"
  c.optim.weight_decay = 5e-7         # A.2.4: "weight decay 5e-7"
  c.model.dropout_h = 0.15            # A.2.4: "hidden-node variational dropout 0.15"
  return c
