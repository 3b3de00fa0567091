"""Rows read minibatch by minibatch from a memory-mapped table, standardised on the way in."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class MappedRows:
    """Looks like the (N, D) standardised tensor train_epoch indexes, but reads only the rows asked for."""

    def __init__(self, x: np.ndarray, rows: np.ndarray, mean: np.ndarray, std: np.ndarray, device: torch.device):
        self._x, self._rows = x, rows
        self._mean, self._std = mean.astype(np.float32), std.astype(np.float32)
        self.device = device
        self.shape = (rows.size, x.shape[1])

    def __getitem__(self, positions: Tensor | slice) -> Tensor:
        # positions (B,) into these rows, or a slice of them -> (B, D) standardised float32 on the device; sorted
        # reads are cheaper for the page cache, and the original order is restored after.
        at = np.arange(*positions.indices(self.shape[0])) if isinstance(positions, slice) else positions.cpu().numpy()
        idx = self._rows[at]
        order = np.argsort(idx, kind="stable")
        block = np.empty((idx.size, self.shape[1]), dtype=np.float32)
        block[order] = np.asarray(self._x[idx[order]], dtype=np.float32)
        return torch.from_numpy((block - self._mean) / self._std).to(self.device)


Rows = Tensor | MappedRows  # standardised rows on the device, held or read on demand
