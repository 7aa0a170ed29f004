#!/usr/bin/env python3
"""Writes the example model repository that `accel serve` runs on in the README.

    python3 examples/generate.py examples/model_repository

Needs numpy and onnx (tests/requirements.txt). The repository is committed, so running this is only
needed to change it.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402

import modelgen  # noqa: E402


def main(root: str) -> None:
    # An MLP 256 -> 1024 -> ReLU -> 256, batched dynamically (the benchmark model).
    modelgen.mlp(os.path.join(root, "mlp", "1", "model.onnx"), seed=1)
    modelgen.write_config(os.path.join(root, "mlp"), modelgen.mlp_config("mlp"))
    # The same MLP without dynamic batching, for comparison: the same bytes in a file of its own (a
    # link to another model's directory would be refused: model files stay inside their model's
    # directory; git stores the identical file once).
    copy = os.path.join(root, "mlp_nobatch", "1", "model.onnx")
    if os.path.lexists(copy):
        os.remove(copy)
    modelgen.mlp(copy, seed=1)
    modelgen.write_config(os.path.join(root, "mlp_nobatch"), modelgen.mlp_config("mlp_nobatch", batching=False))
    # Triton's "simple": INT32 add and subtract, no config (completed from the graph).
    modelgen.add_sub(os.path.join(root, "simple", "1", "model.onnx"), np.int32, batch=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_repository"))
