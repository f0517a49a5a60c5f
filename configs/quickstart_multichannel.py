"""Offline quickstart of Differentiable Hyperparameter Grid Search (sharp_darts.txt sec. 4.1).

    jdarts search --config=configs/quickstart_multichannel.py --workdir=runs/qs_mc
    jdarts search --config=configs/quickstart_multichannel.py --workdir=runs/qs_mc_maxw \
        --config.model.mixing=max_w --config.arch.method=exact_hvp

MultiChannelNet (Fig. 6) at the figure's own small size "((2x2)x2x2x2)": two
filter scales (here 4 and 8 instead of 32 and 64), one layer of a normal and
a reduction stage, SharpSepConv and ResizablePool. The derived genotype is the
path of maximal total weight. Sec. 4.1's search: `--config.model.min_channels=32
--config.model.num_scales=4 --config.model.layers=4 --config.model.final_filters=768`
with 60 epochs ("an automated DARTS search for 60 epochs").
"""
import ml_collections

from jdarts import config_lib


def get_config():
  c = config_lib.search_defaults()
  c.space = "multichannel"
  c.model = ml_collections.ConfigDict(dict(
      min_channels=4, num_scales=2, layers=1,   # Fig. 6's (2x2)x2x2x2, narrowed
      final_filters=16,                         # reference: 768
      primitives=("SharpSepConv", "ResizablePool"),  # reference MULTICHANNELNET_PRIMITIVES
      mixing="softmax",                         # sec. 4.3: 'max_w' for Max-W
      alpha_init_scale=1e-3,                    # reference: 1e-3 * randn
      depthwise="auto", dtype="float32"))
  c.data.name = "digits"
  c.data.test_split = "test"
  c.batch_size = 16
  c.epochs = 1
  c.log_every = 5
  c.arch.learning_rate = 3e-3
  return c
