"""Plots Cosine Power Annealing against Cosine Annealing (sharp_darts.txt Fig. 5).

    python benchmarks/plot_schedules.py --out docs/cosine_power_annealing.png

Fig. 5 compares eq. 1 with eq. 2 at p=10 on a 300-epoch ImageNet run (the
reference's `cnn/cosine_power_annealing.py` plot uses lr 0.2 to 1e-4); the
right panel is the paper's logarithmic view. p=2 (the CIFAR-10 setting of
Table 2) is drawn too. The curves come from `jdarts.schedules`, the code the
runs use, one point per epoch.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jdarts import schedules  # noqa: E402


def curve(name: str, power: float, epochs: int, lr: float, lr_min: float) -> np.ndarray:
  """The per-epoch learning rates of schedule `name` (epochs,)."""
  cfg = ml_collections.ConfigDict(dict(learning_rate=lr, learning_rate_min=lr_min,
                                       schedule=name, power=power))
  schedules.validate(cfg)
  fn = schedules.make_schedule(cfg, epochs, 1)
  return np.array([float(fn(e)) for e in range(epochs + 1)])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="docs/cosine_power_annealing.png")
  ap.add_argument("--epochs", type=int, default=300)
  ap.add_argument("--lr", type=float, default=0.2)
  ap.add_argument("--lr_min", type=float, default=1e-4)
  args = ap.parse_args(argv)
  x = np.arange(args.epochs + 1)
  lines = [("Cosine Annealing (eq. 1)", curve("cosine_by_epoch", 1, args.epochs, args.lr,
                                                args.lr_min)),
           ("Cosine Power Annealing p=2 (eq. 2)", curve("cosine_power_by_epoch", 2,
                                                         args.epochs, args.lr, args.lr_min)),
           ("Cosine Power Annealing p=10 (eq. 2)", curve("cosine_power_by_epoch", 10,
                                                          args.epochs, args.lr, args.lr_min))]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, scale in zip(axes, ("linear", "log")):
    for label, y in lines:
      ax.plot(x, y, label=label)
    ax.set_yscale(scale)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{scale} scale")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
