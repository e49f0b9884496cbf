"""Pieces of ``report.html``: the DAG and the charts (hand-written inline SVG, see
:mod:`pipelines.svg_charts`), data read back from the shards and ``rejected/``, and small HTML
helpers.

Everything here is deterministic for the same output directory: stable orderings, no clock,
charts that are pure functions of their numbers, text kept as text.
"""

from __future__ import annotations

import html
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines.svg_charts import COLORS, bar_chart, histograms  # noqa: F401 (re-exported)
from schemas import Manifest

MAX_ROWS = 200_000
EXAMPLES_PER_REASON = 3
SAMPLES_PER_KIND = 2
CLIP = 400


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def clip(text: str, limit: int = CLIP) -> str:
    return text if len(text) <= limit else text[:limit] + f"… (+{len(text) - limit} chars)"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped unless given as ``Raw``."""

    def cell(tag: str, i: int, value: Any) -> str:
        attr = ' class="num"' if i in numeric else ""
        body = value.html if isinstance(value, Raw) else esc(value)
        return f"<{tag}{attr}>{body}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Raw:
    """Already-escaped HTML for :func:`table`."""

    def __init__(self, html_: str) -> None:
        self.html = html_


# --- DAG ------------------------------------------------------------------------------------


def _layers(steps: list[dict[str, Any]]) -> list[list[str]]:
    """Steps in layers (longest path from a source), each layer ordered by its parents' places."""
    parents = {s["id"]: [ref.partition(".")[0] for ref in s.get("inputs") or []] for s in steps}
    depth: dict[str, int] = {}

    def level(step_id: str) -> int:
        if step_id not in depth:
            depth[step_id] = 0  # guards against cycles in a hand-edited manifest
            depth[step_id] = 1 + max((level(p) for p in parents.get(step_id, []) if p in parents), default=-1)
        return depth[step_id]

    order = {s["id"]: i for i, s in enumerate(steps)}
    layers: list[list[str]] = [[] for _ in range(1 + max((level(s["id"]) for s in steps), default=0))]
    for s in steps:
        layers[level(s["id"])].append(s["id"])
    place: dict[str, float] = {}
    for layer in layers:

        def key(step_id: str) -> tuple[float, int]:
            known = [place[p] for p in parents[step_id] if p in place]
            return (sum(known) / len(known) if known else order[step_id], order[step_id])

        layer.sort(key=key)
        for i, step_id in enumerate(layer):
            place[step_id] = i
    return layers


def dag_svg(manifest: Manifest) -> str:
    """The plan's DAG as an SVG: one box per step with its type and in / emitted counts."""
    steps = [s for s in manifest.spec.get("steps", []) if isinstance(s, dict) and "id" in s]
    if not steps:
        return "<p>The manifest holds no spec steps.</p>"
    layers = _layers(steps)
    box_w, box_h, gap_x, gap_y, pad = 200, 62, 24, 56, 12
    width = max(len(layer) for layer in layers) * (box_w + gap_x) - gap_x + 2 * pad
    height = len(layers) * (box_h + gap_y) - gap_y + 2 * pad
    pos: dict[str, tuple[float, float]] = {}
    for row, layer in enumerate(layers):
        offset = (width - (len(layer) * (box_w + gap_x) - gap_x)) / 2
        for col, step_id in enumerate(layer):
            pos[step_id] = (offset + col * (box_w + gap_x), pad + row * (box_h + gap_y))
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height}" '
        f'width="{width:.0f}" height="{height}" role="img" aria-label="pipeline DAG">',
        '<defs><marker id="dag-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#777"/></marker></defs>',
    ]
    for s in steps:
        x2, y2 = pos[s["id"]]
        for ref in s.get("inputs") or []:
            parent, _, port = ref.partition(".")
            if parent not in pos:
                continue
            x1, y1 = pos[parent]
            ax, ay, bx, by = x1 + box_w / 2, y1 + box_h, x2 + box_w / 2, y2
            mid = (ay + by) / 2
            parts.append(
                f'<path class="edge" d="M{ax:.1f},{ay:.1f} C{ax:.1f},{mid:.1f} {bx:.1f},{mid:.1f} '
                f'{bx:.1f},{by - 1:.1f}" '
                'fill="none" stroke="#777" stroke-width="1.3" marker-end="url(#dag-arrow)"/>'
            )
            if port:
                parts.append(f'<text x="{(ax + bx) / 2:.1f}" y="{mid:.1f}" class="port">{esc(port)}</text>')
    for s in steps:
        x, y = pos[s["id"]]
        ledger = manifest.steps.get(s["id"])
        counts = f"in {ledger.in_:,} → out {ledger.emitted:,}" if ledger else "no ledger"
        dropped = (sum(ledger.filtered.values()), sum(ledger.dead_letter.values())) if ledger else (0, 0)
        extra = f"filtered {dropped[0]:,} · dead {dropped[1]:,}" if any(dropped) else ""
        fill = "#fdecea" if dropped[1] else "#eef3fb"
        label = s["id"] if len(s["id"]) <= 26 else s["id"][:25] + "…"
        parts.append(
            f'<g class="node" id="step-{esc(s["id"])}"><title>{esc(s["id"])} ({esc(s.get("type", ""))})</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{fill}" stroke="#4c72b0"/>'
            f'<text x="{x + 8:.1f}" y="{y + 16}" class="sid">{esc(label)}</text>'
            f'<text x="{x + 8:.1f}" y="{y + 31}" class="stype">{esc(s.get("type", ""))}</text>'
            f'<text x="{x + 8:.1f}" y="{y + 46}" class="scount">{esc(counts)}</text>'
            f'<text x="{x + 8:.1f}" y="{y + 58}" class="sdrop">{esc(extra)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


# --- data from the output directory ---------------------------------------------------------


def rejected_examples(directory: str, step: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Up to three records per (disposition, reason) from ``rejected/<step>.jsonl``, in file order."""
    path = FileSystems.join(directory, "rejected", f"{step}.jsonl")
    found: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    if not FileSystems.exists(path):
        return found
    with FileSystems.open(path, compression_type="uncompressed") as raw, io.TextIOWrapper(raw, "utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            key = (str(record.get("disposition", "")), str(record.get("reason", "")))
            if len(found[key]) < EXAMPLES_PER_REASON:
                found[key].append(record)
    return found


class ShardData:
    """What the report needs from the shards: counts per sample and a few conversations per kind."""

    def __init__(self, directory: str, manifest: Manifest, max_rows: int = MAX_ROWS) -> None:
        import pyarrow as pa

        self.rows = 0
        self.counts: list[tuple[str, str, int, int]] = []  # (kind, source, tokens, supervised)
        best: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for shard in manifest.output.shards:
            path = FileSystems.join(directory, shard.filename)
            if self.rows >= max_rows or not FileSystems.exists(path):
                continue
            with FileSystems.open(path, compression_type="uncompressed") as source:
                for batch in pa.ipc.open_stream(source):
                    batch = batch.slice(0, max_rows - self.rows)
                    if batch.num_rows == 0:
                        break
                    self.rows += batch.num_rows
                    ids = batch.column("id").to_pylist()
                    kinds = batch.column("kind").to_pylist()
                    sources = batch.column("lineage").field("source").to_pylist()
                    counts = batch.column("counts")
                    tokens = counts.field("tokens").to_pylist()
                    supervised = counts.field("supervised_tokens").to_pylist()
                    self.counts += zip(kinds, sources, tokens, supervised, strict=True)
                    for i, (sample_id, kind) in enumerate(zip(ids, kinds, strict=True)):
                        chosen = best[kind]
                        if len(chosen) < SAMPLES_PER_KIND or sample_id < chosen[-1][0]:
                            chosen.append((sample_id, batch.slice(i, 1).to_pylist()[0]))
                            chosen.sort(key=lambda item: item[0])
                            del chosen[SAMPLES_PER_KIND:]
        self.samples = {kind: [row for _, row in best[kind]] for kind in sorted(best)}
        self.capped = self.rows < manifest.output.num_rows

    def by(self, field: int, top: int = 8) -> dict[str, tuple[list[int], list[int]]]:
        """(tokens, supervised) lists per kind (field 0) or source (field 1); small groups pooled."""
        groups: dict[str, tuple[list[int], list[int]]] = {}
        for row in self.counts:
            name = str(row[field])
            groups.setdefault(name, ([], []))
            groups[name][0].append(row[2])
            groups[name][1].append(row[3])
        ranked = sorted(groups, key=lambda g: (-len(groups[g][0]), g))
        if len(ranked) <= top:
            return {g: groups[g] for g in sorted(ranked)}
        kept = {g: groups[g] for g in sorted(ranked[: top - 1])}
        other: tuple[list[int], list[int]] = ([], [])
        for g in ranked[top - 1 :]:
            other[0].extend(groups[g][0])
            other[1].extend(groups[g][1])
        kept[f"other ({len(ranked) - top + 1})"] = other
        return kept
