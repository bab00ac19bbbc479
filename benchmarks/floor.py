"""The floor: the least a spectral linter must do, as one bare script.

Start Python, import numpy, read every 2-D or larger float tensor of a
safetensors file with safetensors' numpy reader, and solve the smaller float64
Gram matrix of each matrix (each kernel position of a convolution) with
``numpy.linalg.eigvalsh``. No fit, no report. Prints the number of matrices.

Usage: python benchmarks/floor.py FILE.safetensors
"""

from __future__ import annotations

import sys

import numpy as np
from safetensors import safe_open


def main(path: str) -> int:
    count = 0
    with safe_open(path, framework="numpy") as handle:
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            if tensor.ndim < 2 or tensor.dtype.kind != "f" or 0 in tensor.shape:
                continue
            weights = tensor.astype(np.float64)
            if weights.ndim > 2:
                # (out, in, *kernel) -> one (out, in) matrix per kernel position.
                weights = weights.reshape(*weights.shape[:2], -1).transpose(2, 0, 1)
            else:
                weights = weights[None]
            for matrix in weights:
                gram = (
                    matrix.T @ matrix
                    if matrix.shape[0] >= matrix.shape[1]
                    else matrix @ matrix.T
                )
                np.linalg.eigvalsh(gram)
                count += 1
    print(count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
