"""benchmarks/recipe_table.py's weighted ensemble: each fold's weights come from the other folds only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "recipe_table.py"


@pytest.fixture(scope="module")
def recipe_table():
    spec = importlib.util.spec_from_file_location("recipe_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _oof(seed: int, signal: float, n: int = 2000, folds: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    logit = signal * (2 * label - 1) + rng.normal(0, 1, n)
    return pd.DataFrame({"path": [f"img{i:04d}.png" for i in range(n)], "fold": np.arange(n) % folds,
                         "label": label, "prob_ai": 1 / (1 + np.exp(-logit)), "processing": "none"})  # fmt: skip


def test_the_weight_grid_covers_the_simplex(recipe_table):
    grid = recipe_table.weight_grid(3, step=0.25)
    assert len(grid) == 15 and all(abs(sum(w) - 1) < 1e-12 and min(w) >= 0 for w in grid)
    assert (1.0, 0.0, 0.0) in grid and (0.25, 0.25, 0.5) in grid


def test_each_folds_weights_are_chosen_without_its_own_rows(recipe_table):
    good, noise = _oof(0, signal=1.0), _oof(1, signal=0.0)
    frame, chosen = recipe_table.weighted_ensemble({"good": good, "noise": noise})
    assert sorted(chosen) == [0, 1, 2, 3] and all(w[0] > w[1] for w in chosen.values())
    assert frame["path"].tolist() == good["path"].tolist()
    for k, w in chosen.items():  # the rows of fold k come from fold k's own weights
        rows = frame["fold"] == k
        expected = w[0] * good["prob_ai"][rows] + w[1] * noise["prob_ai"][rows]
        np.testing.assert_allclose(frame.loc[rows, "prob_ai"], expected)

    # Make the noisy member perfect on folds 0 and 1: fold 0 sees it on fold 1 only, folds 2 and 3 on both.
    cheat = noise.copy()
    on_0 = cheat["fold"].isin([0, 1])
    cheat.loc[on_0, "prob_ai"] = cheat.loc[on_0, "label"].astype(float)
    _, again = recipe_table.weighted_ensemble({"good": good, "noise": cheat})
    assert again[2][1] > chosen[2][1] and again[3][1] > chosen[3][1]
    # fold 2's weights come from folds 0, 1 and 3: the same whatever fold 2's own rows say
    cheat_2 = cheat.copy()
    cheat_2.loc[cheat_2["fold"] == 2, "prob_ai"] = 1 - cheat_2.loc[cheat_2["fold"] == 2, "label"].astype(float)
    _, third = recipe_table.weighted_ensemble({"good": good, "noise": cheat_2})
    assert third[2] == again[2] and any(third[k] != again[k] for k in (0, 1, 3))
