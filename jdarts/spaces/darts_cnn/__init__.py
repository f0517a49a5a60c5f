"""The DARTS convolutional search space (paper sec. 2.1, 2.4, A.1.1, A.2), as one package.

It owns every piece of the space:

* `primitives`: its operation namespace, `OPS` (factories with `OpInfo`
  metadata: `parameter_free`, `search_bn`), `PRIMITIVES`, `make_op`;
* `cells`: the cell in both forms sharing the input preprocessing: the search
  cell of `MixedOp`s (and `BatchedSearchCell`) and the discrete `Cell`;
* `batched_edges`: the mixed operations of all edges leaving one state at once;
* `network`: the search supernet `Network` and the per-edge <-> per-source
  parameter layouts (`to_batched_params`, `from_batched_params`);
* `derive`: alphas -> `Genotype`, ranked by the space's mixing
  (`darts_cnn.derive.derive`; the module keeps the name, so the function is
  not re-exported here);
* `evaluation`: the discrete evaluation networks (CIFAR, ImageNet), registered
  in `jdarts.models.MODELS` as 'cifar' and 'imagenet';
* `space`: `DartsCNNSpace`, the `SearchSpace` registered as 'darts_cnn'.

Importing the package registers the space and the evaluation networks.
"""
from jdarts.spaces.darts_cnn import derive, evaluation
from jdarts.spaces.darts_cnn.cells import (BatchedSearchCell, Cell, MixedOp, SearchCell,
                                           edges_from_source, num_edges)
from jdarts.spaces.darts_cnn.evaluation import NetworkCIFAR, NetworkImageNet
from jdarts.spaces.darts_cnn.network import Network, from_batched_params, to_batched_params
from jdarts.spaces.darts_cnn.primitives import OPS, PRIMITIVES, OpInfo, make_op, op_info
from jdarts.spaces.darts_cnn.space import DartsCNNSpace

__all__ = ["derive", "evaluation", "BatchedSearchCell", "Cell", "MixedOp", "SearchCell",
           "edges_from_source", "num_edges", "derive", "NetworkCIFAR", "NetworkImageNet",
           "Network", "from_batched_params", "to_batched_params", "OPS", "PRIMITIVES",
           "OpInfo", "make_op", "op_info", "DartsCNNSpace"]
