"""Search quality on a committed set (tests/data/knowledge_quality.json): 52 handbook
entries and 104 questions, two per entry, reworded so that they share few words with
it. The top-3 hit rate (the entry a question is about among the first three hits) is
reported and held above ``TOP3_FLOOR``.

First measured (hybrid: all-MiniLM-L6-v2 and keywords, fused by rank; a user's search
through REST): top-3 99/104 = 0.952, top-1 85/104 = 0.817, MRR 0.890. The floor, 0.92
(96/104), sits three questions below that: a change that costs ranking quality fails
here. Quality does not depend on the database: SQLite only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from storage.models import GlobalRole
from tests.helpers import Api

DATA = json.loads((Path(__file__).parent / "data" / "knowledge_quality.json").read_text())
TOP3_FLOOR = 0.92


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_top3_hit_rate_on_reworded_questions(
    api: Api, record_property: pytest.RecordProperty
) -> None:
    admin = await api.user("root", GlobalRole.ADMIN)
    reader = await api.user("uma")
    ids: dict[str, str] = {}
    for entry in DATA["entries"]:
        body = {key: entry[key] for key in ("title", "text", "tags")}
        created = await api.call("POST", "/api/v1/knowledge", user=admin, json=body, expect=201)
        ids[created["id"]] = entry["key"]

    top1 = top3 = 0
    reciprocal = 0.0
    misses: list[dict[str, Any]] = []
    for question in DATA["questions"]:
        page = await api.call(
            "GET", "/api/v1/knowledge", user=reader, params={"q": question["q"], "limit": 10}
        )
        ranked = [ids[item["id"]] for item in page["items"]]
        if question["key"] in ranked:
            rank = ranked.index(question["key"]) + 1
            reciprocal += 1 / rank
            top1 += rank == 1
            top3 += rank <= 3
        if question["key"] not in ranked[:3]:
            misses.append({"q": question["q"], "want": question["key"], "got": ranked[:3]})

    total = len(DATA["questions"])
    rate = top3 / total
    report = (
        f"knowledge search on {len(DATA['entries'])} entries, {total} reworded questions: "
        f"top-3 {top3}/{total} = {rate:.3f}, top-1 {top1}/{total} = {top1 / total:.3f}, "
        f"MRR {reciprocal / total:.3f}"
    )
    print(report)  # shown with -s; recorded in the JUnit XML either way
    record_property("top3_hit_rate", round(rate, 4))
    record_property("top1_hit_rate", round(top1 / total, 4))
    assert rate >= TOP3_FLOOR, f"{report}; missed: {misses}"
