"""Render results as docs/benchmarks.md with PNG plots beside it: one module per
section (rooms, connections, chat, joins, documents, assistant, cluster,
knowledge), the file around them
(file.py)."""

from bench.report.assistant import assistant_section
from bench.report.chat import chat_section
from bench.report.cluster import cluster_section
from bench.report.connections import connections_section
from bench.report.documents import documents_section
from bench.report.file import write
from bench.report.joins import joins_section
from bench.report.knowledge import knowledge_section
from bench.report.rooms import fanout_section

__all__ = [
    "assistant_section",
    "chat_section",
    "cluster_section",
    "connections_section",
    "documents_section",
    "fanout_section",
    "joins_section",
    "knowledge_section",
    "write",
]
