"""The human report of a run: ``report.md`` beside the shards (the same tables the CLI prints)."""

from __future__ import annotations

import os

from schemas import Manifest


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
    return "\n".join(lines)


def write_report(directory: str, manifest: Manifest) -> None:
    with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(render_markdown(manifest))
