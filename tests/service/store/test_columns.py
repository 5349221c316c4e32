"""The embedded store's entry columns (service/store/columns.py): whose kept neighbourhood a code enters, against a
brute-force reading of its definition."""

from __future__ import annotations

import numpy as np
import pytest

from genreid.service.core.similarity import unit_length
from genreid.service.store.columns import EntryColumns


def brute_force(ids: list[int], units: np.ndarray, radii: np.ndarray, codes: np.ndarray, leaving: set[int]
                ) -> list[dict[int, float]]:
    distances = np.linalg.norm(codes[:, None].astype(np.float64) - units[None], axis=2)
    return [{ids[j]: float(row[j]) for j in range(len(ids)) if row[j] <= radii[j] and ids[j] not in leaving}
            for row in distances]


def test_reached_by_is_every_live_entry_within_its_radius_through_adds_removals_and_compaction():
    rng = np.random.default_rng(0)
    columns = EntryColumns(8)
    ids, units, radii = [], np.zeros((0, 8), np.float32), np.zeros(0)
    for step in range(6):
        new_ids = list(range(1 + 900 * step, 1 + 900 * (step + 1)))
        new_units = unit_length(rng.normal(size=(900, 8))).astype(np.float32)
        new_radii = rng.uniform(0.2, 1.2, 900)
        new_radii[::50] = np.inf  # entries with fewer neighbours than the kept size reach everything
        columns.append(new_ids, cameras=[None] * 900, seen=[None] * 900, units=new_units, radii=new_radii)
        ids, units, radii = ids + new_ids, np.concatenate([units, new_units]), np.concatenate([radii, new_radii])
        gone = set(rng.choice(ids, 700, replace=False).tolist())  # over 1,024 dead rows: compaction runs
        columns.remove(sorted(gone))
        keep = [i for i, entry_id in enumerate(ids) if entry_id not in gone]
        ids, units, radii = [ids[i] for i in keep], units[keep], radii[keep]
        changed = {ids[i]: float(rng.uniform(0.2, 1.2)) for i in rng.choice(len(ids), 40, replace=False)}
        columns.set_radii(changed)
        radii = np.array([changed.get(entry_id, r) for entry_id, r in zip(ids, radii, strict=True)])
        codes = unit_length(rng.normal(size=(5, 8)))
        leaving = set(ids[:30])
        found = columns.reached_by(codes, leaving=leaving)
        expected = brute_force(ids, units, radii, codes, leaving)
        for got, want in zip(found, expected, strict=True):
            assert set(want) <= set(got)  # the slack may add entries at the edge, never lose one
            assert all(got[i] - radii[ids.index(i)] <= 1e-5 for i in got)
            assert [got[i] for i in want] == pytest.approx(list(want.values()), abs=1e-6)
