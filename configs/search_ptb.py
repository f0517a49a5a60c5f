"""DARTS recurrent cell search on Penn Treebank (Liu et al. 2019, sec. 3.1.2, A.1.2).

    jdarts search --config=configs/search_ptb.py --config.data.data_dir=DIR --workdir=runs/rnn_ptb

DIR holds ptb.train.txt, ptb.valid.txt and ptb.test.txt (Mikolov's
preprocessed PTB, as the reference's data/penn). First order by default;
`:second_order` differentiates through the weight step
(`arch.method='unrolled'`; 'exact_hvp' gives the same numbers by
Hessian-vector products, 'finite_difference' is eq. 8) with the recurrent
reference's virtual step (`arch.virtual_step='clip_constant'`). The weights train on
the training text and the alphas on the validation text, as the reference's
train_search.py does. A smaller local run: `:debug`.
"""
import ml_collections

from jdarts import config_lib


def get_config(arg: str = ""):
  c = config_lib.search_defaults()
  c.seed = 3                          # reference rnn/train_search.py --seed
  c.space = "darts_rnn"
  c.model = ml_collections.ConfigDict(dict(
      hidden=300,                     # A.1.2: "embedding and the hidden sizes are set to 300"
      steps=8,                        # sec. 3.1.2: N = 12 nodes, 8 of them intermediate
      bptt=35,                        # A.1.2: "BPTT length 35"
      primitives=("none", "tanh", "relu", "sigmoid", "identity"),  # sec. 3.1.2
      dropout_embed=0.2,              # A.1.2: "variational dropout of 0.2 to word embeddings"
      dropout_x=0.75,                 # A.1.2: "0.75 to the cell input"
      dropout_h=0.25,                 # A.1.2: "0.25 to all the hidden nodes"
      dropout_out=0.75,               # A.1.2: "A dropout of 0.75 ... to the output layer"
      dropout_embed_tokens=0.0,       # reference train_search.py --dropoute 0
      tar_beta=1e-3,                  # A.1.2 "as Merity et al.": reference --beta (TAR)
      alpha_init_scale=1e-3,          # reference 1e-3 * randn; the paper says zeros
      time_loop="scan",               # jax.lax.scan over time (benchmarks/RESULTS.md)
      dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(
      name="ptb", data_dir="",
      train_portion=0.5,              # unused by text data: valid text is the alphas' data
      augment=False, cutout=0, test_split="test"))
  c.batch_size = 256                  # A.1.2: "batch size 256"
  c.epochs = 50                       # A.1.2: "trained for 50 epochs"
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=20.0,             # A.1.2: eta_w = 20
      learning_rate_min=0.0,
      schedule="constant",            # reference: no annealing during the search
      momentum=0.0,                   # A.1.2: "SGD without momentum"
      weight_decay=5e-7,              # A.1.2: "weight decay 5e-7"
      grad_clip=0.25))                # Merity et al. / reference --clip 0.25
  c.arch.learning_rate = 3e-3         # A.1.2: eta_alpha = 3e-3
  c.arch.b1, c.arch.b2 = 0.9, 0.999   # A.1.2: "momentum beta = (0.9, 0.999)"
  c.arch.weight_decay = 1e-3          # A.1.2: "weight decay 1e-3"
  c.parallel.cross_replica_bn = True  # one batch, however it is split
  c.log_every = 50                    # reference --log-interval
  if arg == "second_order":
    c.arch.method = "unrolled"        # eq. 6-7
    # reference rnn/architect.py: w' from the clipped g, the second-order term
    # scaled by the clip coefficient (`_compute_unrolled_model`, `clip_coef`)
    c.arch.virtual_step = "clip_constant"
  elif arg == "debug":
    c.model.hidden, c.batch_size, c.max_steps, c.log_every = 64, 32, 20, 5
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; use '', 'second_order' or 'debug'.")
  return c
