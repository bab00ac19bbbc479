"""Plain SGD training of MLP3 with the SETOL experiment's stopping rule."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from mlp3_data import MLP3, Dataset, student_generator

BASE_LEARNING_RATE = 0.01
BATCH_SIZE = 32
#: Stop after this many epochs in a row without a large enough improvement.
PATIENCE = 3
#: An epoch improves only if its training loss is this much below the best.
MIN_IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run, with errors as fractions in [0, 1]."""

    epochs: int
    stopped_by: str
    train_loss: float
    train_error: float
    test_error: float
    seconds: float


class EarlyStopper:
    """The stopping rule: training stops once the loss has not fallen
    ``min_improvement`` below its best for ``patience`` epochs in a row.
    """

    def __init__(
        self, patience: int = PATIENCE, min_improvement: float = MIN_IMPROVEMENT
    ) -> None:
        self.patience = patience
        self.min_improvement = min_improvement
        self.best = math.inf
        self.stale = 0

    def update(self, loss: float) -> bool:
        """Record one epoch's loss and return True when training should stop."""
        if loss < self.best - self.min_improvement:
            self.best = loss
            self.stale = 0
        else:
            self.stale += 1
        return self.stale >= self.patience


def error_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) != y).float().mean().item()


def train(
    data: Dataset, seed: int, multiplier: float, max_steps: int
) -> tuple[MLP3, TrainResult]:
    """Train a fresh MLP3 whose initial weights depend on ``seed`` only.

    Training ends by the stopping rule, or after the epoch that reaches
    ``max_steps`` SGD steps (a cap in steps costs the same time whatever the
    size of the data set). Every multiplier of one seed starts from the same
    weights and draws the same batch order, so runs differ only in the
    learning rate.
    """
    start = time.perf_counter()
    stream = student_generator(seed)
    model = MLP3(init=stream)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=BASE_LEARNING_RATE * multiplier, momentum=0.0
    )
    stopper = EarlyStopper()
    n_train = len(data.x_train)
    max_epochs = math.ceil(max_steps / math.ceil(n_train / BATCH_SIZE))
    stopped_by = "epoch cap"
    epochs = 0
    loss = math.nan
    while epochs < max_epochs:
        permutation = torch.randperm(n_train, generator=stream)
        loss = _train_epoch(
            model, optimizer, data.x_train[permutation], data.y_train[permutation]
        )
        epochs += 1
        if not math.isfinite(loss):
            stopped_by = "diverged"
            break
        if stopper.update(loss):
            stopped_by = "stopping rule"
            break
    result = TrainResult(
        epochs=epochs,
        stopped_by=stopped_by,
        train_loss=loss,
        train_error=error_rate(model, data.x_train, data.y_train),
        test_error=error_rate(model, data.x_test, data.y_test),
        seconds=time.perf_counter() - start,
    )
    return model, result


def _train_epoch(
    model: MLP3, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    """Run one pass of SGD over ``x`` in order and return the mean batch loss.

    The mean of the batch losses, as SGD saw them during the epoch, is the
    training loss that the stopping rule watches.
    """
    loss_function = torch.nn.CrossEntropyLoss()
    total = torch.zeros(())
    batches = 0
    for first in range(0, len(x), BATCH_SIZE):
        optimizer.zero_grad(set_to_none=True)
        logits = model(x[first : first + BATCH_SIZE])
        loss = loss_function(logits, y[first : first + BATCH_SIZE])
        loss.backward()
        optimizer.step()
        total += loss.detach()
        batches += 1
    return total.item() / batches
