"""Row statistics of embedding matrices, computed in float32 in bounded memory.

Pure tensor maths: takes and returns tensors, never touches models, tokenizers or files.
Every function works on float32, bfloat16 and float16 matrices by converting one chunk of rows
at a time, so the extra memory is O(chunk * d + d^2), never a float32 copy of the whole matrix.

Left out: anything that decides *which* rows are reference rows (see rows/layout.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Rows converted to float32 at a time: 2,048 rows keeps the working set at a few d x d blocks
# (O(d^2) extra memory) while each matrix product is still large enough to run at full speed.
CHUNK_ROWS = 2048


def _chunks(matrix: Tensor, chunk_rows: int = CHUNK_ROWS):
    for start in range(0, matrix.shape[0], chunk_rows):
        yield matrix[start : start + chunk_rows].to(torch.float32)


def row_mean(matrix: Tensor) -> Tensor:
    """Mean of the rows of ``matrix`` [n, d], as float32 [d] (float64 accumulation)."""
    if matrix.shape[0] == 0:
        raise ValueError("cannot take the mean of a matrix with no rows")
    total = torch.zeros(matrix.shape[1], dtype=torch.float64, device=matrix.device)
    for chunk in _chunks(matrix):
        total += chunk.sum(dim=0).to(torch.float64)  # float32 within a chunk, float64 across chunks
    return (total / matrix.shape[0]).to(torch.float32)


def row_covariance(matrix: Tensor, mean: Tensor | None = None) -> Tensor:
    """Population covariance (W - mu)^T (W - mu) / n of the rows of ``matrix`` [n, d], float32 [d, d].

    Centred chunk by chunk, so no centred copy of the matrix is ever formed.
    """
    mean = row_mean(matrix) if mean is None else mean
    acc = torch.zeros(matrix.shape[1], matrix.shape[1], dtype=torch.float32, device=matrix.device)
    for chunk in _chunks(matrix):
        centred = chunk - mean
        acc.addmm_(centred.T, centred)
    return acc / matrix.shape[0]


def sample_gaussian_rows_lowrank(
    matrix: Tensor, mean: Tensor, k: int, scale: float, generator: torch.Generator
) -> Tensor:
    """k samples of N(mu, scale * Sigma) without forming Sigma: mu + sqrt(scale) (W - mu)^T z / sqrt(n).

    With z ~ N(0, I_n) the sample is Gaussian with covariance scale * (W-mu)^T (W-mu) / n = scale * Sigma,
    exactly. Cost O(k n d); the cheaper sampler when k is below about d.
    Returns float32 [k, d].
    """
    n, d = matrix.shape
    acc = torch.zeros(k, d, dtype=torch.float32, device=matrix.device)
    z_sum = torch.zeros(k, 1, dtype=torch.float32, device=matrix.device)
    for chunk in _chunks(matrix):
        z = torch.randn(chunk.shape[0], k, generator=generator, dtype=torch.float32).to(matrix.device)
        acc.addmm_(z.T, chunk)
        z_sum += z.sum(dim=0).unsqueeze(1)
    centred = acc - z_sum * mean  # (W - mu)^T z = W^T z - mu * sum(z)
    return mean + math.sqrt(scale / n) * centred


def sample_gaussian_rows_cov(
    matrix: Tensor, mean: Tensor, k: int, scale: float, generator: torch.Generator
) -> Tensor:
    """k samples of N(mu, scale * Sigma) through a factor of the d x d covariance.

    Cost O(n d^2 + d^3 + k d^2); the cheaper sampler when k is above about d. Uses the symmetric
    eigendecomposition, so a singular (rank-deficient) Sigma is handled exactly. Returns float32 [k, d].
    """
    cov = row_covariance(matrix, mean)
    eigvals, eigvecs = torch.linalg.eigh(cov.double())
    factor = (eigvecs * eigvals.clamp_min(0).sqrt()).to(torch.float32)  # factor @ factor.T == cov
    z = torch.randn(k, matrix.shape[1], generator=generator, dtype=torch.float32).to(matrix.device)
    rows = z @ factor.T
    del z
    return rows.mul_(math.sqrt(scale)).add_(mean)  # in place: one k x d temporary, not three


def lowrank_is_cheaper(n: int, d: int, k: int) -> bool:
    """True when the O(k n d) sampler costs less than the O(n d^2 + d^3) one."""
    return k * n * d < n * d * d + d**3
