"""Train a DARTS cell on ImageNet, mobile setting (Liu et al. 2019, A.2.3).

    jdarts summary --config=configs/train_imagenet.py [--config.genotype=NAME] [--json]
    jdarts train --config=configs/train_imagenet.py --workdir=runs/eval_in

Paper A.2.3: "A network of 14 cells is trained for 250 epochs with batch size
128, weight decay 3e-5 and initial SGD learning rate 0.1 (decayed by a factor
of 0.97 after each epoch). Other hyperparameters follow Zoph et al. (2018);
Real et al. (2018); Liu et al. (2018a)"; those others are the reference's
cnn/train_imagenet.py defaults: 48 initial channels (the paper's 4.7M
parameters need C=48; the script's own default is 50), momentum 0.9, label
smoothing 0.1, auxiliary head with weight 0.4, gradient clip 5, no drop-path.
DARTS_V2: 4,718,752 parameters (4.7M, paper Table 3).

Data: tfds `imagenet2012` read with `tfds.data_source` (no TensorFlow at
training time; `jdarts.data.imagenet`). It is a manual download: put
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in DIR/downloads/manual/,
run `tfds build imagenet2012 --data_dir=DIR --file_format=array_record` once
(needs TensorFlow), then train with `--config.data.data_dir=DIR`. Training
augmentation is the reference's: RandomResizedCrop(224), horizontal flip,
ColorJitter(0.4, 0.4, 0.4, hue 0.2); evaluation resizes to 256 and takes the
central 224 x 224 of the validation images. `summary` needs no data.
"""
from jdarts import train_config


def get_config(arg: str = ""):
  c = train_config.train_defaults()
  c.seed = 0                          # reference train_imagenet.py --seed
  c.model.name = "imagenet"
  c.model.init_channels = 48          # 4.7M params with DARTS_V2 (paper Table 3)
  c.model.layers = 14                 # A.2.3: "a network of 14 cells"
  c.model.auxiliary = True            # reference README: --auxiliary
  c.model.drop_path_prob = 0.0        # reference --drop_path_prob default 0
  c.data.name = "imagenet2012"
  c.data.image_shape = (224, 224, 3)  # A.2.3: "input image size is 224 x 224"
  c.data.num_classes = 1000
  c.data.cutout = 0
  c.data.test_split = "validation"
  c.data.num_threads = 16             # JPEG decoding and resizing per image (PIL)
  c.batch_size = 128                  # A.2.3
  c.epochs = 250                      # A.2.3
  c.optim.learning_rate = 0.1         # A.2.3: "initial SGD learning rate 0.1"
  c.optim.schedule = "exponential_by_epoch"
  c.optim.lr_decay = 0.97             # A.2.3: "decayed by a factor of 0.97 after each epoch"
  c.optim.weight_decay = 3e-5         # A.2.3
  c.optim.momentum = 0.9              # reference --momentum
  c.optim.grad_clip = 5.0             # reference --grad_clip
  c.loss.label_smoothing = 0.1        # reference --label_smooth
  c.loss.auxiliary_weight = 0.4       # reference --auxiliary_weight
  c.log_every = 100                   # reference --report_freq
  if arg:
    raise ValueError(f"Unknown config variant {arg!r}; this config has none.")
  return c
