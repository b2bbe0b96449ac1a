"""The offline generator: a deterministic Markdown draft per mode, no network.

The same article fields always give the same draft, with exactly the word
count asked for, so the whole pipeline can be tried and tested anywhere.
"""

from __future__ import annotations

import hashlib
import json
import random

from bulkgen_cli.content import Reply, ReplyKind
from bulkgen_cli.core.model import Item, Mode

_OPENERS = {
    Mode.topic: "This draft covers {subject}.",
    Mode.keywords: "This draft is built around the keywords {subject}.",
    Mode.trends: "This draft looks at the trend {subject} and what it means.",
    Mode.spin: "This draft rewrites its source in new words: {subject}.",
}
_WORDS = (
    "practical clear steps readers often find useful ideas simple examples planning "
    "common mistakes good habits better results each section explains why it matters "
    "a short checklist helps start small keep notes compare options review progress"
).split()


def _subject(item: Item) -> str:
    a = item.article
    mode = Mode(item.mode)
    if mode is Mode.keywords:
        return ", ".join(a.get("keywords", []))
    if mode is Mode.trends:
        return str(a.get("trend", ""))
    if mode is Mode.spin:
        return str(a.get("source_text") or a.get("source_url") or "")[:120]
    return str(a.get("topic", ""))


def draft(item: Item) -> dict[str, str]:
    """Title and Markdown body of an offline draft."""
    a = item.article
    subject = _subject(item)
    title = str(a.get("title") or subject[:80] or "Untitled draft").strip()
    seed = hashlib.sha256(json.dumps([item.mode, a], sort_keys=True).encode()).digest()
    rng = random.Random(seed)
    target = int(a.get("word_count", 1000))
    lead = _OPENERS[Mode(item.mode)].format(subject=subject)
    details = [f"Tone: {a['tone']}." if a.get("tone") else "", f"For {a['audience']}." if a.get("audience") else ""]
    opening = " ".join([lead, *(d for d in details if d)])
    filler = [rng.choice(_WORDS) for _ in range(max(target - len(opening.split()), 0))]
    sections = []
    for start in range(0, len(filler), 60):
        text = " ".join(filler[start : start + 60])
        sections.append(f"## Part {start // 60 + 1}\n\n{text[:1].upper()}{text[1:]}.")
    body = opening + "\n\n" + "\n\n".join(sections)
    return {"title": title, "body": f"# {title}\n\n{body}\n"}


class OfflineGenerator:
    name = "offline"
    remote = False

    def generate(self, item: Item) -> Reply:
        return Reply(ReplyKind.ok, content=draft(item))

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass
