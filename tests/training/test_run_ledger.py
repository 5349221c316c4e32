"""The run ledger: records taken from a real (tiny) run, kept once, summarised over seeds, rendered in the card."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from genreid.training.model_card import CARD_JSON, render_markdown, write_card
from genreid.training.presets import get_preset
from genreid.training.run_ledger import RunRecord, append_records, read_ledger, record_run, summarise, variant_name

ROOT = Path(__file__).resolve().parents[2]
CARDS = Path(__file__).parent / "cards"


def _record(variant: str, seed: int, mAP: float, *, size: tuple[int, int] = (64, 32), test: float | None = None):
    metrics = {"mAP": mAP, "rank1": mAP + 0.1, "mINP": mAP - 0.2}
    return RunRecord(variant=variant, inv_id_resolution=size, seed=seed, steps=10, images_per_step=8,
                     validation=metrics, test=None if test is None else {**metrics, "mAP": test}, minutes=1.0,
                     machine="m", run=f"r{seed}", recorded="2026-12-03")


def test_a_finished_run_gives_one_record_per_inv_id_with_its_own_scores(tiny_run):
    ctx = tiny_run.ctx
    records = record_run(ctx, note="tiny")
    assert sorted(record.variant for record in records) == ["hybrid", "paper"]
    for record in records:
        saved = ctx.load(f"inv_id_{record.variant}")
        assert record.validation == {m: pytest.approx(saved["validation"][m]) for m in ("mAP", "rank1", "mINP")}
        assert record.test is not None and 0.0 <= record.test["mAP"] <= 1.0
        assert (record.seed, record.steps, record.run) == (ctx.preset.seed, ctx.preset.inv_id_steps, ctx.run_dir.name)
        assert record.minutes is not None and record.minutes >= 0
        assert "seed" not in record.overrides and record.note == "tiny"
    assert {r.images_per_step for r in records if r.variant == "paper"} == {ctx.preset.inv_id_batch}


def test_variant_names_tell_recipes_apart_that_seeds_must_not_mix():
    assert variant_name(get_preset("cpu"), "hybrid") == "hybrid"
    assert variant_name(get_preset("cpu", classifier="linear"), "discriminative") == "discriminative, linear classifier"
    warm = get_preset("cpu", inv_id_init="/runs/a/inv_id_hybrid.pt")
    assert variant_name(warm, "hybrid") == "hybrid, fine-tuned from a finished Inv-Id"
    patches = dataclasses.replace(warm, inv_id_stem_stride=2)
    assert variant_name(patches, "hybrid") == "hybrid, 2x2 patch input conv, fine-tuned from a finished Inv-Id"
    wider = get_preset("cpu", inv_id_widths=(48, 96, 192, 384))
    assert variant_name(wider, "hybrid") == "hybrid, trunk widths 48-96-192-384"
    assert variant_name(dataclasses.replace(wider, inv_id_last_stride=1), "hybrid") == (
        "hybrid, trunk widths 48-96-192-384, last stride 1")
    assert variant_name(dataclasses.replace(wider, inv_id_widths=wider.inv_widths), "hybrid") == "hybrid"
    longer = get_preset("cpu", samples=36_000, inv_id_steps=5_000)
    assert variant_name(longer, "hybrid") == "hybrid, 36,000 generated samples, 5,000 steps"
    assert variant_name(longer, "discriminative") == "discriminative, cosine classifier, 5,000 steps"


def test_the_ledger_keeps_each_run_once_and_reads_back_what_was_written(tmp_path):
    ledger = tmp_path / "results" / "runs.jsonl"
    assert read_ledger(ledger) == []
    first = [_record("hybrid", 0, 0.7), _record("hybrid", 1, 0.6, size=(128, 64))]
    assert append_records(ledger, first) == first
    again = [_record("hybrid", 0, 0.7), _record("hybrid", 2, 0.5)]
    assert append_records(ledger, again) == again[1:]
    assert read_ledger(ledger) == first + again[1:]


def test_seeds_are_summarised_per_variant_and_size():
    records = [_record("d", 0, 0.552, test=0.40), _record("d", 1, 0.603), _record("d", 2, 0.556, test=0.42),
               _record("d", 0, 0.501, size=(128, 64)), _record("h", 0, 0.758)]
    summary = summarise(records)
    assert list(summary) == [("d", (64, 32)), ("d", (128, 64)), ("h", (64, 32))]
    spread = summary[("d", (64, 32))]["validation_mAP"]
    assert spread.values == (0.552, 0.603, 0.556)
    assert spread.mean == pytest.approx(statistics.fmean([0.552, 0.603, 0.556]))
    assert spread.sd == pytest.approx(statistics.stdev([0.552, 0.603, 0.556]))
    assert summary[("d", (64, 32))]["test_mAP"].values == (0.40, 0.42)  # only the seeds that measured it
    assert summary[("h", (64, 32))]["validation_mAP"].sd is None
    assert "test_mAP" not in summary[("d", (128, 64))]


def test_the_card_renders_the_ledger_as_a_variant_table():
    card = json.loads((CARDS / "lenient.json").read_text())
    before = render_markdown(card)
    records = [_record("discriminative, cosine classifier", s, v) for s, v in ((0, 0.552), (1, 0.603), (2, 0.556))]
    card.update(inv_id_runs_ledger="docs/results/inv_id_runs.jsonl",
                inv_id_runs=[dataclasses.asdict(record) for record in records])
    text = render_markdown(card)
    row = next(line for line in text.splitlines() if line.startswith("| discriminative, cosine classifier |"))
    assert row.startswith("| discriminative, cosine classifier | 64x32 | 3 | 57.0 ± 2.8 (55.2, 60.3, 55.6) |")
    assert row.endswith("| not measured | not measured |")
    assert text.index("## Inv-Id variants across runs") < text.index("## Precision")
    assert text.replace(text[text.index("## Inv-Id variants"):text.index("## Precision")], "") == before


def test_the_shipped_card_carries_the_repository_ledger():
    card = json.loads((ROOT / "models" / CARD_JSON).read_text())
    assert [RunRecord.from_dict(r) for r in card["inv_id_runs"]] == read_ledger(ROOT / card["inv_id_runs_ledger"])


def test_record_run_refuses_a_directory_that_is_not_a_run_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "genreid.service.cli", "record-run", str(tmp_path),
                           "--ledger", str(tmp_path / "l.jsonl")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"genreid record-run: {tmp_path}: not a training run (no config.json)"
    assert not (tmp_path / "l.jsonl").exists()


def test_write_card_takes_the_ledger(tiny_run, tmp_path):
    ledger = tmp_path / "runs.jsonl"
    append_records(ledger, record_run(tiny_run.ctx))
    write_card(tiny_run.ctx, tiny_run.models, ledger=ledger)
    card = json.loads((tiny_run.models / CARD_JSON).read_text())
    assert [r["variant"] for r in card["inv_id_runs"]] == [r.variant for r in read_ledger(ledger)]
    height, width = tiny_run.ctx.preset.inv_id_resolution
    assert f"| hybrid | {height}x{width} | 1 |" in (tiny_run.models / "MODEL_CARD.md").read_text()
