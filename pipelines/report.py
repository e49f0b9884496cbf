"""The human report of a run, beside the shards: ``report.md`` (the ledger the CLI prints) and
``report.html``, one self-contained page (inline CSS and SVG, no scripts, nothing fetched) with
the DAG, the ledger with example rejects, the ratios as bar charts, token histograms and a few
conversations. ``agentmill report DIR`` writes the page again for a published directory.
"""

from __future__ import annotations

import json
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines import storage
from pipelines.report_html import (
    SAMPLES_PER_KIND,
    Raw,
    ShardData,
    bar_chart,
    clip,
    dag_svg,
    esc,
    histograms,
    rejected_examples,
    table,
)
from schemas import AuditReport, Manifest

HTML_REPORT = "report.html"


def ledger_rows(manifest: Manifest) -> list[tuple[str, str, int, int, str, str, int]]:
    """(step, type, in, passed, filtered, dead letters, emitted) per step, reasons spelled out."""

    def reasons(counts: dict[str, int]) -> str:
        return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())) or "0"

    return [
        (
            step_id,
            ledger.type,
            ledger.in_,
            ledger.passed,
            reasons(ledger.filtered),
            reasons(ledger.dead_letter),
            ledger.emitted,
        )
        for step_id, ledger in manifest.steps.items()
    ]


def input_integrity_lines(manifest: Manifest) -> list[str]:
    """One line per step whose input files were truncated or corrupt (the records read before
    the damage are in the output; the rest are lost): for the run summary and ``report.md``."""
    from transforms.files import INPUT_INTEGRITY_REASONS

    lines = []
    for step_id, ledger in manifest.steps.items():
        damaged = {r: n for r, n in sorted(ledger.dead_letter.items()) if r in INPUT_INTEGRITY_REASONS}
        if damaged:
            counts = ", ".join(f"{reason} {n}" for reason, n in damaged.items())
            lines.append(
                f"input integrity: step {step_id!r} read damaged input ({counts}); what could not be read "
                f"is counted in rejected/{step_id}.jsonl"
            )
    return lines


def render_markdown(manifest: Manifest) -> str:
    out = manifest.output
    lines = [
        f"# agentmill run: {manifest.name}",
        "",
        f"- rows: {out.num_rows} in {len(out.shards)} shard(s); by kind: "
        + (", ".join(f"{k} {v}" for k, v in sorted(out.by_kind.items())) or "none"),
        f"- tokens: {out.tokens} (supervised {out.supervised_tokens}; whitespace count)",
        f"- spec hash: `{manifest.spec_hash}`; agentmill {manifest.agentmill_version}",
        f"- inputs: {len(manifest.inputs)} file(s)",
        "",
        "## Ledger",
        "",
        "| step | type | in | passed | filtered | dead letters | emitted |",
        "|---|---|---:|---:|---|---|---:|",
    ]
    lines += [f"| {s} | {t} | {i} | {p} | {f} | {d} | {e} |" for s, t, i, p, f, d, e in ledger_rows(manifest)]
    lines += ["", "Rejected records, with reasons, are under `rejected/<step>.jsonl`.", ""]
    lines += [f"**{line}**\n" for line in input_integrity_lines(manifest)]
    if manifest.audit is not None:
        lines += [
            "## Data-quality audit",
            "",
            "| check | status | share | threshold | count / total |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r.name} | {r.status} ({r.severity}) | {r.share:.4f} | {r.threshold:g} | {r.count} / {r.total} |"
            for r in manifest.audit.checks.values()
        ]
        lines.append("")
    return "\n".join(lines)


# --- report.html ----------------------------------------------------------------------------


def _ledger_section(directory: str, manifest: Manifest) -> str:
    seconds = manifest.run.get("step_seconds", {})
    rows = [
        (
            Raw(f'<a href="#step-{esc(s)}">{esc(s)}</a>'),
            t,
            i,
            p,
            f,
            d,
            e,
            ", ".join(f"{k} {v}" for k, v in sorted(manifest.steps[s].ports.items())) or "",
            seconds.get(s, ""),
        )
        for s, t, i, p, f, d, e in ledger_rows(manifest)
    ]
    header = ["step", "type", "in", "passed", "filtered", "dead letters", "emitted", "ports", "step s"]
    parts = [table(header, rows, (2, 3, 6, 8))]
    if seconds:
        parts.append(
            "<p>step s: seconds the workers spent inside the step, summed over workers, from the SDK's execution-time "
            "metrics (steps are fused into stages, so wall time cannot be split by step).</p>"
        )
    reasons = []
    for step_id, ledger in manifest.steps.items():
        examples = rejected_examples(directory, step_id)
        for disposition, counts in (("filtered", ledger.filtered), ("dead_letter", ledger.dead_letter)):
            for reason, n in sorted(counts.items()):
                found = examples.get((disposition, reason), [])
                body = (
                    table(
                        ["record", "location", "detail", "payload"],
                        [
                            (
                                r.get("record_id") or "",
                                r.get("location") or "",
                                r.get("detail") or "",
                                Raw(f"<code>{esc(clip(str(r.get('payload') or '')))}</code>"),
                            )
                            for r in found
                        ],
                    )
                    if found
                    else "<p>No records in rejected/ for this reason.</p>"
                )
                reasons.append(
                    f'<details class="reason {disposition}"><summary><b>{esc(step_id)}</b> · {esc(disposition)} · '
                    f"<b>{esc(reason)}</b> · {n:,} (showing {len(found)})</summary>{body}</details>"
                )
    parts.append("<h3>Reasons, with example records</h3>" + ("".join(reasons) or "<p>Nothing was rejected.</p>"))
    return "".join(parts)


def _shares(summary: dict[str, Any], target: str, achieved: str) -> tuple[list[str], dict[str, list[Any]]]:
    names = sorted(set(summary.get(target) or {}) | set(summary.get(achieved) or {}))
    return names, {
        "target": [(summary.get(target) or {}).get(n) for n in names],
        "achieved": [(summary.get(achieved) or {}).get(n) for n in names],
    }


def _ratio_charts(step_id: str, summary: dict[str, Any]) -> list[str]:
    """Bar charts for the summary shapes agentmill's steps write; other keys are left to the JSON."""
    charts = []
    for unit in ("tokens", "turns"):  # balance: capability shares
        part = summary.get(unit)
        if isinstance(part, dict) and "target_share" in part:
            names, series = _shares(part, "target_share", "achieved_share")
            charts.append(bar_chart(f"{step_id}: capability share of {unit}", names, series, "share"))
    if "target_eta" in summary:  # mix
        series = {"target": [summary.get("target_eta")], "achieved": [summary.get("achieved_eta")]}
        if summary.get("available_eta") is not None:
            series["available"] = [summary["available_eta"]]
        charts.append(
            bar_chart(f"{step_id}: eta (agent share of {summary.get('unit', 'units')})", ["eta"], series, "share")
        )
        groups = summary.get("groups") or {}
        if groups:
            names = sorted(groups)
            charts.append(
                bar_chart(
                    f"{step_id}: source shares within their side",
                    [f"{n} ({groups[n].get('side')})" for n in names],
                    {
                        "target": [groups[n].get("target_share_of_side") for n in names],
                        "achieved": [groups[n].get("achieved_share_of_side") for n in names],
                    },
                    "share of side",
                )
            )
    keep = summary.get("keep_format")
    if isinstance(keep, dict) and "target" in keep:  # align
        charts.append(
            bar_chart(
                f"{step_id}: keep-format share",
                ["keep_format"],
                {"target": [keep.get("target")], "achieved": [keep.get("achieved")]},
                "share",
            )
        )
    if isinstance(summary.get("target"), dict) and isinstance(summary.get("achieved"), dict):  # negatives
        names, series = _shares(summary, "target", "achieved")
        charts.append(bar_chart(f"{step_id}: negatives per case", names, series, "samples"))
    return charts


def _ratios_section(manifest: Manifest) -> str:
    parts = []
    for step_id, summary in manifest.ratios.items():
        if not isinstance(summary, dict):
            continue
        charts = _ratio_charts(step_id, summary)
        raw = json.dumps(summary, indent=2, sort_keys=True)
        parts.append(
            f'<h3>{esc(step_id)}</h3><div class="charts">{"".join(charts)}</div>'
            f"<details><summary>summary as written in the manifest</summary><pre>{esc(raw)}</pre></details>"
        )
    return "".join(parts) or "<p>No step in this run reports ratios.</p>"


STATUS_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e"}


def _audit_table(report: AuditReport) -> str:
    rows = []
    for result in report.checks.values():
        colour = STATUS_COLOURS[result.status]
        examples = "".join(f"<li><code>{esc(e.id)}</code> {esc(clip(e.excerpt, 300))}</li>" for e in result.examples)
        rows.append(
            (
                Raw(f"<b>{esc(result.name)}</b><br><small>{esc(result.definition)}</small>"),
                Raw(f'<b style="color:{colour}">{esc(result.status)}</b> ({esc(result.severity)})'),
                f"{result.share:.4f}",
                f"{result.threshold:g}",
                f"{result.count:,} / {result.total:,}",
                Raw(f"<ul>{examples}</ul>" if examples else ""),
            )
        )
    header = ["check", "status", "share", "threshold", "count / total", "examples"]
    return table(header, rows, numeric=(2, 3, 4))


def _audit_section(manifest: Manifest) -> str:
    """The publish audit and every ``audit`` step's report, with example ids and excerpts."""
    parts = []
    if manifest.audit is not None:
        parts.append(
            f"<p>What <code>write</code> published: {manifest.audit.samples:,} samples. "
            "Definitions and tuning: docs/audit.md.</p>" + _audit_table(manifest.audit)
        )
    for step_id, report in manifest.audits.items():
        parts.append(f"<h3>step {esc(step_id)}: {report.samples:,} samples</h3>" + _audit_table(report))
    return "".join(parts) or "<p>This run was not audited (the spec sets <code>audit: {enabled: false}</code>).</p>"


def _samples_section(data: ShardData) -> str:
    parts = []
    for kind, rows in data.samples.items():
        for row in rows:
            lineage, counts = row.get("lineage") or {}, row.get("counts") or {}
            messages = []
            for m in row.get("messages") or []:
                text = m.get("content") or ""
                for call in m.get("tool_calls") or []:
                    text += f"\n[tool call {call.get('id') or ''}] {call.get('name')} {call.get('arguments')}"
                if m.get("tool_call_id"):
                    text = f"[result of {m.get('tool_call_id')}{' ' + m['name'] if m.get('name') else ''}]\n{text}"
                messages.append(
                    (
                        m.get("role"),
                        "✓" if m.get("loss") else "",
                        m.get("capability") or "",
                        m.get("part") or "",
                        Raw(f"<pre>{esc(clip(text, 2000))}</pre>"),
                    )
                )
            parts.append(
                f'<details class="sample"><summary><b>{esc(kind)}</b> · {esc(row.get("id"))} · source '
                f"{esc(lineage.get('source'))} · {esc(lineage.get('derivation') or '')} · tokens "
                f"{counts.get('tokens')} (supervised {counts.get('supervised_tokens')})</summary>"
                + table(["role", "loss", "capability", "part", "content"], messages)
                + "</details>"
            )
    return "".join(parts) or "<p>The output holds no samples.</p>"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;vertical-align:top;text-align:left}th{background:#f3f5f8}
td.num,th.num{text-align:right}code,pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-word;margin:0}details{margin:4px 0}summary{cursor:pointer}
details.dead_letter>summary{color:#a11}.charts{display:flex;flex-wrap:wrap;gap:12px}
.charts svg{max-width:100%;height:auto}.scroll{overflow-x:auto}
svg.dag text{font:12px ui-monospace,Menlo,Consolas,monospace;fill:#222}svg.dag .stype{fill:#666}
svg.dag .sid{font-weight:bold}svg.dag .sdrop{fill:#a11;font-size:11px}svg.dag .port{fill:#777;font-size:10px}
.meta td:first-child{font-weight:bold}
"""


def render_html(directory: str, manifest: Manifest) -> str:
    data = ShardData(directory, manifest)
    out = manifest.output
    meta = table(
        ["", ""],
        [
            ("rows", f"{out.num_rows:,} in {len(out.shards)} shard(s)"),
            ("by kind", ", ".join(f"{k} {v:,}" for k, v in sorted(out.by_kind.items())) or "none"),
            ("tokens", f"{out.tokens:,} (supervised {out.supervised_tokens:,}; whitespace count)"),
            ("spec hash", manifest.spec_hash),
            ("agentmill", manifest.agentmill_version),
            ("inputs", f"{len(manifest.inputs)} file(s)"),
        ],
    )
    note = f" (first {data.rows:,} of {out.num_rows:,} rows)" if data.capped else ""
    hist = (
        [histograms(f"per kind{note}", data.by(0)), histograms(f"per source{note}", data.by(1))]
        if data.counts
        else ["<p>The output holds no samples.</p>"]
    )
    body = [
        f"<h1>agentmill run: {esc(manifest.name)}</h1>",
        f'<div class="meta">{meta}</div>',
        f'<h2 id="dag">DAG</h2><p>Each box: step id, type, records in → emitted.</p>'
        f'<div class="scroll">{dag_svg(manifest)}</div>',
        f'<h2 id="ledger">Ledger</h2>{_ledger_section(directory, manifest)}',
        f'<h2 id="audit">Data-quality audit</h2>{_audit_section(manifest)}',
        f'<h2 id="ratios">Ratios</h2>{_ratios_section(manifest)}',
        f'<h2 id="tokens">Tokens per sample</h2><div class="charts">{"".join(hist)}</div>',
        f'<h2 id="samples">Samples</h2><p>The first {SAMPLES_PER_KIND} samples per kind, by id. ✓ marks supervised '
        f"(loss) messages.</p>{_samples_section(data)}",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>agentmill report: {esc(manifest.name)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_html_report(directory: str, manifest: Manifest | None = None) -> str:
    """Write ``directory/report.html`` (reading ``manifest.json`` when no manifest is given)."""
    if manifest is None:
        manifest = Manifest.model_validate(json.loads(storage.read_text(FileSystems.join(directory, "manifest.json"))))
    path = FileSystems.join(directory, HTML_REPORT)
    storage.write_text(path, render_html(directory, manifest))
    return path


def write_report(directory: str, manifest: Manifest) -> None:
    storage.write_text(FileSystems.join(directory, "report.md"), render_markdown(manifest))
    write_html_report(directory, manifest)
