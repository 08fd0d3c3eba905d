"""The knowledge search section (issue 14): indexing and searching 10,000 passages in
Qdrant local mode."""

from __future__ import annotations

from bench.report.common import ms
from bench.scenarios.knowledge import MEMBER_OF, KnowledgeResult


def knowledge_section(result: KnowledgeResult) -> str:
    write_s = result.index_s - result.embed_s
    lines = [
        "## Knowledge search",
        "",
        f"{result.chunks:,} passages (9,000 knowledge entries and 1,000 documents of one "
        "passage each, 250-400 characters) indexed from nothing and searched, in one process "
        "through the app's own SearchIndex: all-MiniLM-L6-v2 on numpy (one BLAS thread) "
        "and Qdrant local mode in a folder, as a server without `QDRANT_URL` runs "
        "(bench/scenarios/knowledge.py). *Search*: the 104 reworded questions of the "
        "quality test, each asked as many times as the run repeats: as a user (approved "
        f"knowledge and {MEMBER_OF} documents they are a member of, what the assistant "
        "retrieves) and as an admin (all knowledge); 15 passages asked for, as a search "
        "for 5 does. *Embedding* and *Qdrant* are the search's two parts timed alone.",
        "",
        "| passages | indexing (s) | passages/s | of which embedding | of which writing "
        "| folder (MiB) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {result.chunks:,} | {result.index_s:.1f} | {result.per_s:,.0f} "
        f"| {result.embed_s:.1f} s ({result.embed_s / result.index_s:.0%}) "
        f"| {write_s:.1f} s ({write_s / result.index_s:.0%}) | {result.folder_mib:.0f} |",
        "",
        "| search as | whole p50 / p99 (ms) | embedding p50 / p99 (ms) | Qdrant p50 / p99 (ms) |",
        "| --- | --- | --- | --- |",
    ]
    embed = result.embed_query
    shares = []
    for name, whole in result.search.items():
        alone = result.store_query[name]
        lines.append(
            f"| {name} | {ms(whole.percentile(0.5))} / {ms(whole.percentile(0.99))} "
            f"| {ms(embed.percentile(0.5))} / {ms(embed.percentile(0.99))} "
            f"| {ms(alone.percentile(0.5))} / {ms(alone.percentile(0.99))} |"
        )
        median, store = whole.percentile(0.5), alone.percentile(0.5)
        if median and store:
            shares.append(f"{store / median:.0%} as {name}")
    lines += [
        "",
        f"Qdrant's part of a search's median: {', '.join(shares)}. In local mode each of "
        "the two candidate searches (dense and keywords) runs unfiltered for three times "
        "the passages it needs and the scope is checked on them here "
        "(storage/vector_scope.py), falling back to Qdrant's filter when too few are in "
        "scope; what is left is mostly local mode's keyword scoring, a loop in Python "
        "over every passage. A Qdrant server (`QDRANT_URL`) filters and scores in its "
        "own indexes instead.",
    ]
    return "\n".join(lines) + "\n"
