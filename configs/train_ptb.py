"""Train a recurrent cell's language model on Penn Treebank (Liu et al. 2019, A.2.2).

    jdarts train --config=configs/train_ptb.py --config.data.data_dir=DIR --workdir=runs/ptb

DIR holds ptb.train.txt, ptb.valid.txt, ptb.test.txt. `--config.genotype=`
a published cell (DARTS_V2 (default), DARTS_V1, ENAS) or a search's
genotype.json. The paper trains "until convergence" (3 days on a 1080Ti);
`--config.max_steps=N` stops early, a rerun in the workdir resumes.
`jdarts summary --config=configs/train_ptb.py --json` counts the weights as
the reference does (DARTS_V2: 22,960,000; paper Table 2: 23M).
"""
import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.trainer = "lm"                    # jdarts.lm_train_loop (cli dispatch)
  c.genotype = "DARTS_V2"             # paper Fig. 6 / Table 2
  c.seed = 1267                       # reference rnn/train.py --seed
  c.model = ml_collections.ConfigDict(dict(
      hidden=850,                     # A.2.2: "embedding and the hidden sizes are set to 850"
      bptt=35,                        # A.1.2 ("remain exactly the same as ... search")
      dropout_embed_tokens=0.1,       # A.2.2: "token-wise dropout on the embedding layer 0.1"
      dropout_embed=0.2, dropout_x=0.75, dropout_h=0.25, dropout_out=0.75,  # A.1.2
      tar_beta=1e-3,                  # reference --beta (Merity et al. TAR)
      time_loop="scan", dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(
      name="ptb", data_dir="",
      eval_batch_size=10,             # reference eval_batch_size
      test_batch_size=1,              # reference test_batch_size
      max_seq_len_delta=20,           # reference --max_seq_len_delta
      length_bucket=5,                # pad random BPTT lengths to multiples of 5 (compiles)
      train_tokens=0))                # >0: train on the first N tokens only (smoke tests)
  c.batch_size = 64                   # A.2.2: "batch size 64"
  c.epochs = 8000                     # reference --epochs; A.2.2 "until convergence"
  c.max_steps = 0
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=20.0,             # A.2.2: eta_w = 20
      learning_rate_min=0.0, schedule="constant", momentum=0.0,  # SGD, then ASGD
      weight_decay=8e-7,              # A.2.2: "weight decay 8e-7"
      grad_clip=0.25))                # reference --clip
  c.nonmono = 5                       # reference --nonmono (AWD-LSTM's trigger)
  c.asgd_after_epochs = 0             # >0: switch after N epochs regardless (smoke tests)
  c.parallel = ml_collections.ConfigDict(dict(backend="none", num_devices=1,
                                              cross_replica_bn=False))
  c.checkpoint = ml_collections.ConfigDict(dict(enabled=True, every_steps=0, keep=3,
                                                async_save=False))
  c.log_every = 200                   # reference --log-interval
  c.progress = True
  c.compilation_cache_dir = "~/.cache/jdarts/xla"
  c.drop_init_programs = True  # as in config_lib.search_defaults
  if arg:
    raise ValueError(f"Unknown config variant {arg!r}.")
  return c
