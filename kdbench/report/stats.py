"""Statistics of the tables (docs/protocol.md): mean, sample std, 95% t-interval and n; paired t-tests on matched seeds.

Everything is vectorised over groups: one groupby, then Student's t on whole arrays through ``scipy.special``
(``stdtrit``, ``stdtr``: the functions ``scipy.stats.t.ppf`` and ``.sf`` call, without importing scipy.stats,
which costs every report command about a second).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

CONFIDENCE = 0.95
MIN_SEEDS = 3  # docs/protocol.md: at least 3 seeds per cell; fewer are flagged
MATCH_COLUMNS = ("seed", "subset_seed")  # a paired comparison matches the same data subset and training seed


def t_interval(mean: np.ndarray, std: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE):
    """(low, high) of the two-sided t-interval mean ± t_{(1+c)/2, n-1} · std / √n; NaN where n < 2."""
    mean, std, n = (np.asarray(a, dtype=float) for a in (mean, std, n))
    valid = n >= 2
    quantile = np.full(n.shape, np.nan)
    quantile[valid] = special.stdtrit(n[valid] - 1, (1.0 + confidence) / 2.0)  # t.ppf
    with np.errstate(invalid="ignore", divide="ignore"):
        half = quantile * std / np.sqrt(n)
    return mean - half, mean + half


def describe(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of ``by``: mean, std (ddof=1), n, ci_low, ci_high (95% t-interval) and few_seeds (n < 3).

    NaN values of ``value`` are not counted (n counts the runs that have the value).
    """
    grouped = frame.groupby(by, sort=True, dropna=False)[value]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index()
    table["n"] = table["n"].astype(int)
    table["ci_low"], table["ci_high"] = t_interval(table["mean"], table["std"], table["n"])
    table["few_seeds"] = table["n"] < MIN_SEEDS
    return table


def paired_t(differences_mean: np.ndarray, differences_std: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided p-value of the paired t-test from the mean, sample std and number of paired differences.

    NaN when n < 2; when every difference is equal (std 0): 1.0 if they are all 0, else 0.0 (t is infinite).
    """
    mean, std, n = (np.asarray(a, dtype=float) for a in (differences_mean, differences_std, n))
    p_value = np.full(mean.shape, np.nan)
    valid = n >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        t_stat = mean / (std / np.sqrt(n))
    spread = valid & (std > 0)
    p_value[spread] = 2.0 * special.stdtr(n[spread] - 1, -np.abs(t_stat[spread]))  # t.sf(|t|)
    constant = valid & (std == 0)
    p_value[constant] = np.where(mean[constant] == 0, 1.0, 0.0)
    return p_value


def paired_differences(frame: pd.DataFrame, cell: list[str], method_column: str, baseline: str, value: str,
                       match: tuple[str, ...] = MATCH_COLUMNS) -> pd.DataFrame:
    """Each method against ``baseline`` within each ``cell``, paired on the ``match`` columns (same subset, seed).

    Returns one row per (cell, method) that shares at least one matched seed with the baseline: delta (mean of
    the paired differences method − baseline), delta_std, delta_n (pairs), delta_ci_low/high, p_value (paired
    t-test). The baseline itself and methods with no matched seed are absent.
    """
    columns = [*cell, method_column, "delta", "delta_std", "delta_n", "delta_ci_low", "delta_ci_high", "p_value"]
    keys = [*cell, *match]
    values = frame.dropna(subset=[value])
    base = values[values[method_column] == baseline]
    if base.empty:
        return pd.DataFrame(columns=columns)
    base = base.groupby(keys, dropna=False)[value].mean().rename("_baseline").reset_index()
    others = values[values[method_column] != baseline]
    paired = others.merge(base, on=keys, how="inner")
    if paired.empty:
        return pd.DataFrame(columns=columns)
    paired["_difference"] = paired[value] - paired["_baseline"]
    table = describe(paired, [*cell, method_column], "_difference")
    table = table.rename(columns={"mean": "delta", "std": "delta_std", "n": "delta_n", "ci_low": "delta_ci_low",
                                  "ci_high": "delta_ci_high"})
    table["p_value"] = paired_t(table["delta"], table["delta_std"], table["delta_n"])
    return table[columns]
