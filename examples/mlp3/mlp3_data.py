"""Offline data sets for the MLP3 experiment: teacher-student and scikit-learn digits.

Each data set is a pair of float32 input matrices with 784 columns and int64
labels in ``0..9``, so the student's first layer is the 300 x 784 matrix of the
MNIST setting whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

INPUTS = 784
CLASSES = 10
WIDTHS = (300, 100)

#: Inputs used to standardise the teacher's logits, drawn apart from the data.
_REFERENCE_SAMPLES = 20_000
#: Roles of the random streams. One seed gives unrelated teacher, data and
#: student streams, so no student starts at the teacher's weights.
_TEACHER, _DATA, _STUDENT = 0, 1, 2


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of one data set."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def generator(role: int, seed: int) -> torch.Generator:
    """Return a torch generator for one role (teacher, data, student) and seed."""
    state = np.random.SeedSequence([role, seed]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def student_generator(seed: int) -> torch.Generator:
    """Return the stream of a student's initial weights and batch order."""
    return generator(_STUDENT, seed)


class MLP3(torch.nn.Module):
    """The 784-300-100-10 ReLU network, Glorot-normal weights and zero biases."""

    def __init__(self, init: torch.Generator) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(INPUTS, WIDTHS[0])
        self.fc2 = torch.nn.Linear(WIDTHS[0], WIDTHS[1])
        self.fc3 = torch.nn.Linear(WIDTHS[1], CLASSES)
        for layer in (self.fc1, self.fc2, self.fc3):
            torch.nn.init.xavier_normal_(layer.weight, generator=init)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x))
        hidden = torch.relu(self.fc2(hidden))
        return self.fc3(hidden)


def teacher_student(n_train: int, n_test: int, seed: int = 0) -> Dataset:
    """Label standard Gaussian inputs with a fixed random MLP3 teacher.

    A random teacher with zero biases puts most inputs in one or two classes,
    so its logits are standardised per class (mean 0, standard deviation 1 over
    reference inputs) before the argmax. That is the same as rescaling the
    rows of its output layer and setting its bias, so the teacher stays a
    784-300-100-10 network.
    """
    teacher = MLP3(generator(_TEACHER, seed))
    inputs = generator(_DATA, seed)
    with torch.no_grad():
        reference = teacher(torch.randn(_REFERENCE_SAMPLES, INPUTS, generator=inputs))
        mean, std = reference.mean(dim=0), reference.std(dim=0)
        x = torch.randn(n_train + n_test, INPUTS, generator=inputs)
        y = ((teacher(x) - mean) / std).argmax(dim=1)
    return Dataset(
        name="teacher-student",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
    )


def digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Load scikit-learn's 8 x 8 digits, upsampled to 28 x 28 and scaled to [0, 1].

    Raises ImportError when scikit-learn is not installed. Upsampling is a
    linear map of the 64 pixels, so the inputs of ``fc1`` have rank 64 at most.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(
        images, size=(28, 28), mode="bilinear", align_corners=False
    )
    x = images.reshape(len(images), INPUTS)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=generator(_DATA, seed))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        name="digits",
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
    )
