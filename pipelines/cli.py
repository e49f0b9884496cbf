"""The ``agentmill`` command: run, validate, graph and inspect pipelines.

User errors (bad specs, missing inputs, unwritable outputs, bad arguments) print one clear
message and exit 2; a run that fails or whose accounting does not add up exits 1. Add
``--debug`` (before or after the command) for the traceback.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from pipelines.errors import AgentmillError, OutputError, RunError
from schemas import Manifest

console = Console(stderr=True)


class UsageError(AgentmillError):
    """A command used with missing or inconsistent arguments."""


def is_agentmill_output(directory: str) -> bool:
    """Whether ``directory`` is an agentmill output (:func:`pipelines.publish.is_agentmill_output`,
    imported when a command needs it: it imports Beam, which ``validate`` does without)."""
    from pipelines.publish import is_agentmill_output as is_output

    return is_output(directory)


stdout = Console()


def _ledger_table(manifest: Manifest) -> Table:
    from pipelines.report import ledger_rows

    table = Table(title=f"{manifest.name}: ledger", show_lines=False)
    for column, justify in (
        ("step", "left"),
        ("type", "left"),
        ("in", "right"),
        ("passed", "right"),
        ("filtered", "left"),
        ("dead letters", "left"),
        ("emitted", "right"),
    ):
        table.add_column(column, justify=justify)
    for row in ledger_rows(manifest):
        table.add_row(*(str(v) for v in row))
    return table


def cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.beam_import import import_beam

    import_beam()  # before anything imports Beam: without pandas, until something needs it
    from pipelines.graph import load_plan
    from pipelines.report import input_integrity_lines
    from pipelines.run import run_plan
    from transforms import progress

    plan = load_plan(args.spec)
    _freeze_imports()
    started = time.monotonic()
    counts: dict[str, int] = {}
    stage = ["preparing"]
    with console.status("[bold]preparing", spinner="dots") as status:

        def refresh() -> None:
            done = "  ".join(f"{step} {n:,}" for step, n in counts.items())
            status.update(f"[bold]{plan.spec.name}[/]: {stage[0]} ({time.monotonic() - started:.0f}s)  {done}")

        def on_stage(name: str) -> None:
            stage[0] = name
            refresh()
            if not args.quiet:
                console.log(name)

        def on_records(step_id: str, n: int) -> None:
            counts[step_id] = counts.get(step_id, 0) + n
            refresh()

        progress.listen(on_records)
        try:
            summary = run_plan(
                plan,
                args.output,
                beam_args,
                on_stage=on_stage,
                allow_empty=True if args.allow_empty else None,
                max_dead_letter_share=args.max_dead_letter_share,
            )
        finally:
            progress.listen(None)
    out = summary.manifest.output
    if not args.quiet:
        console.print(_ledger_table(summary.manifest))
    for line in input_integrity_lines(summary.manifest):
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    console.print(
        f"[green]wrote[/] {out.num_rows} samples in {len(out.shards)} shard(s) to {summary.output} "
        f"({out.tokens} tokens, {out.supervised_tokens} supervised) in {summary.seconds:.1f}s"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipelines.graph import load_plan
    from pipelines.inputs import collect_inputs

    plan = load_plan(args.spec)
    inputs = collect_inputs(plan, files=not args.no_inputs, fingerprints=False)
    files = "input files not checked" if args.no_inputs else f"{len(inputs)} input files"
    console.print(f"[green]ok[/] {args.spec}: {len(plan.steps)} steps, {files}")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from pipelines.graph import load_plan, mermaid

    stdout.out(mermaid(load_plan(args.spec)), end="")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipelines.verify import verify

    directory = args.directory
    if not is_agentmill_output(directory):
        raise OutputError(f"{directory!r} is not an agentmill output (no manifest.json)")
    check = verify(directory, hashes=False)
    if not check.ok:
        raise OutputError(
            f"{directory!r} does not match its manifest: {check.summary()} "
            f"(run 'agentmill verify {directory}' for every shard)"
        )
    manifest = check.manifest
    if args.json:
        stdout.out(manifest.dump_json())
        return 0
    out = manifest.output
    stdout.print(
        f"[bold]{manifest.name}[/]  rows {out.num_rows}  shards {len(out.shards)}  "
        f"tokens {out.tokens}  supervised {out.supervised_tokens}  spec {manifest.spec_hash}"
    )
    if out.by_kind:
        stdout.print("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(out.by_kind.items())))
    if manifest.audit is not None:
        flagged = [f"{r.name} {r.share:.4g} ({r.status})" for r in manifest.audit.checks.values() if r.status != "pass"]
        checks = len(manifest.audit.checks)
        stdout.print(
            f"audit: {checks - len(flagged)} of {checks} checks pass" + ("; " + ", ".join(flagged) if flagged else "")
        )
    import pyarrow as pa

    if out.shards:
        with pa.memory_map(os.path.join(directory, out.shards[0].filename)) as source:
            schema = pa.ipc.open_stream(source).schema
        stdout.print("[bold]schema[/]")
        stdout.out(schema.remove_metadata().to_string())
    stdout.print(_ledger_table(manifest))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every shard matches the manifest, 1 on a mismatch (each shard's problems
    printed), 2 when the directory has no readable manifest."""
    from pipelines.verify import verify

    check = verify(args.directory, hashes=not args.no_hash)
    for shard in check.shards:
        expected = shard.expected
        if shard.ok:
            stdout.print(f"[green]ok[/]        {expected.filename}  {expected.rows:,} rows  {expected.bytes:,} bytes")
        else:
            stdout.print(f"[red]MISMATCH[/]  {expected.filename}: {'; '.join(shard.problems)}", highlight=False)
    for problem in check.problems:
        stdout.print(f"[red]MISMATCH[/]  {problem}", highlight=False)
    out = check.manifest.output
    if check.ok:
        what = "rows, bytes and sha256" if not args.no_hash else "rows and bytes (sha256 not checked)"
        console.print(f"[green]ok[/] {args.directory}: {len(out.shards)} shard(s), {out.num_rows:,} rows; {what} match")
        return 0
    bad = sum(not s.ok for s in check.shards)
    console.print(
        f"[red]error:[/] {args.directory} does not match its manifest: {bad} of {len(out.shards)} shard(s) "
        f"differ{', and the output-level checks fail' if check.problems else ''}",
        highlight=False,
    )
    return 1


def cmd_audit(args: argparse.Namespace) -> int:
    from pipelines.auditing import audit_path, report_json

    report, failures = audit_path(args.path, args.format, args.kind, args.policy)
    if args.json:
        stdout.out(report_json(report))
    else:
        table = Table(title=f"audit of {report.samples} samples")
        for column in ("check", "status", "share", "threshold", "count", "example"):
            table.add_column(column, justify="left" if column in ("check", "status", "example") else "right")
        colours = {"pass": "green", "warn": "yellow", "fail": "red"}
        for name, result in report.checks.items():
            example = result.examples[0] if result.examples else None
            table.add_row(
                name,
                f"[{colours[result.status]}]{result.status}[/]",
                f"{result.share:.4f}",
                f"{result.threshold:g}",
                f"{result.count}/{result.total}",
                f"{example.id[:12]} {example.excerpt[:70]}" if example else "",
            )
        stdout.print(table)
    if failures:
        first = failures[0]
        console.print(
            f"[yellow]{len(failures)} record(s) could not be read[/]; first: {first.location}: {first.reason}"
        )
    if report.blocking:
        console.print(f"[red]blocking checks over their threshold:[/] {', '.join(report.blocking)}")
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report import write_html_report

    if not is_agentmill_output(args.directory):
        raise OutputError(f"{args.directory!r} is not an agentmill output (no manifest.json)")
    try:
        path = write_html_report(args.directory)
    except OSError as exc:
        raise OutputError(f"cannot write the report in {args.directory!r}: {exc.strerror}") from None
    console.print(f"[green]wrote[/] {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.export import export_directory

    report = export_directory(
        args.directory,
        args.to,
        args.output,
        loss_key=args.loss_key,
        arguments=args.arguments,
        with_ids=args.with_ids,
    )
    if args.json:
        stdout.out(json.dumps(report.as_dict(), sort_keys=True))
    console.print(
        f"[green]wrote[/] {args.output}: {report.written} of {report.samples} samples ({report.calls} structured "
        f"tool calls, {report.calls_in_text} spelled in text) as {args.to}",
        highlight=False,
    )
    for what, counts in (("skipped", report.skipped), ("lost in the target format", report.lost)):
        if counts:
            console.print(f"[yellow]{what}:[/] " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_eval_hallucination(args: argparse.Namespace) -> int:
    from evals import hallucination as h

    if not args.model and not args.responses:
        raise UsageError("give --model (to generate answers) or --responses (answers made elsewhere)")
    try:
        keywords = h.Keywords.load(args.keywords)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use --keywords {args.keywords!r}: {exc}") from None
    items = None
    if args.data:
        if not is_agentmill_output(args.data):
            raise OutputError(f"{args.data!r} is not an agentmill output (no manifest.json)")
        items = h.items_from_dir(args.data, args.per_case)
        if not items:
            raise UsageError(f"{args.data!r} holds no evaluation items (negatives, general or aligned agent samples)")
    if args.responses:
        try:
            pairs = h.pairs_from_responses(h.read_responses(args.responses), items)
        except OSError as exc:
            raise UsageError(f"cannot read --responses: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        if items is None:
            raise UsageError("--model needs --data DIR for the prompts")
        if not os.path.isdir(args.model):
            raise UsageError(f"--model {args.model!r} is not a local model directory")
        with console.status(f"generating {len(items)} answers with {args.model}"):
            responses = h.generate(args.model, items, args.max_new_tokens)
        pairs = [(item.case, response, item.expected_tool) for item, response in zip(items, responses, strict=True)]
        if args.save_responses:
            with open(args.save_responses, "w", encoding="utf-8") as handle:
                for item, response in zip(items, responses, strict=True):
                    handle.write(
                        json.dumps({"id": item.id, "case": item.case, "response": response}, ensure_ascii=False) + "\n"
                    )
    result = h.score(pairs, keywords)
    table = Table(title="hallucination (Agent-H style)")
    for column in ("case", "n", "H_ReAct", "H_General", "correct call"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for case, row in result["cases"].items():
        table.add_row(
            h.CASE_NAMES.get(case, case),
            str(row["n"]),
            str(row.get("h_react", "")),
            str(row.get("h_general", "")),
            str(row.get("correct_call", "")),
        )
    stdout.print(table)
    if "hscore" in result:
        stdout.print(
            f"H_ReAct {result['h_react']}  H_General {result['h_general']}  [bold]HScore {result['hscore']}[/]"
        )
    if "positive_correct_call" in result:
        stdout.print(f"positive case: correct calls {result['positive_correct_call']}")
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    console.print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentmill", description="Agent trajectories -> fine-tuning data, as Beam pipelines."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[common])

    run = add("run", help="run a pipeline spec", description="Run SPEC; Beam options go after '--'.")
    run.add_argument("spec")
    run.add_argument("--output", "-o", required=True, help="output directory (published atomically)")
    run.add_argument("--quiet", "-q", action="store_true")
    run.add_argument(
        "--allow-empty",
        action="store_true",
        help="publish even when the write step has no rows (the spec's publish.allow_empty)",
    )
    run.add_argument(
        "--max-dead-letter-share",
        type=_share,
        default=None,
        metavar="X",
        help="publish only if no step dead-letters more than this share of its records, 0..1 "
        "(default: the spec's publish.max_dead_letter_share, 0.5; 1 turns the check off)",
    )
    run.set_defaults(handler=cmd_run)

    validate = add("validate", help="check a spec without running it")
    validate.add_argument("spec")
    validate.add_argument("--no-inputs", action="store_true", help="do not check that input paths match files")
    validate.set_defaults(handler=cmd_validate)

    graph = add("graph", help="print the DAG as Mermaid text")
    graph.add_argument("spec")
    graph.set_defaults(handler=cmd_graph)

    inspect = add("inspect", help="summarise an output directory")
    inspect.add_argument("directory")
    inspect.add_argument("--json", action="store_true", help="print the manifest")
    inspect.set_defaults(handler=cmd_inspect)

    verify = add(
        "verify",
        help="check an output directory's shards against its manifest",
        description="Check every shard of DIRECTORY against manifest.json (rows, bytes, sha256) and state.json "
        "against the manifest's shard list. Exit 0: all match; 1: a mismatch (printed per shard); "
        "2: no readable manifest or bad arguments.",
    )
    verify.add_argument("directory")
    verify.add_argument("--no-hash", action="store_true", help="skip the sha256 (rows and bytes only)")
    verify.set_defaults(handler=cmd_verify)

    audit = add(
        "audit",
        help="data-quality audit of an output directory or of input files",
        description="Audit PATH: an output directory, or input files (path or glob) with --format. "
        "Exit 1 when a block check is over its threshold.",
    )
    audit.add_argument("path")
    audit.add_argument("--format", choices=["agentinstruct", "agent_flan", "sharegpt", "openai"], help="input format")
    audit.add_argument("--kind", default="agent", choices=["agent", "general", "negative", "instruction"])
    audit.add_argument("--policy", help="YAML: a spec with an 'audit:' block, or the block itself")
    audit.add_argument("--json", action="store_true", help="print one JSON object keyed by check name")
    audit.set_defaults(handler=cmd_audit)

    report = add("report", help="write DIR/report.html, a self-contained page about an output directory")
    report.add_argument("directory")
    report.set_defaults(handler=cmd_report)

    export = add(
        "export",
        help="write an output's samples as OpenAI or ShareGPT (LLaMA-Factory) JSON Lines",
        description="Export the samples of DIRECTORY for other trainers: --to openai ({messages, tools} with "
        "tool_calls, as TRL's SFTTrainer reads) or --to sharegpt (LLaMA-Factory's function_call / observation "
        "turns and tools). docs/export.md says what each target loses.",
    )
    export.add_argument("directory")
    export.add_argument("--to", required=True, choices=["openai", "sharegpt"])
    export.add_argument("--output", "-o", required=True, help="the JSON Lines file to write")
    export.add_argument(
        "--loss-key",
        choices=["train", "weight"],
        default=None,
        help="add each message's loss flag as axolotl's 'train' (true/false) or a 'weight' (1/0) key",
    )
    export.add_argument(
        "--arguments",
        choices=["string", "object"],
        default="string",
        help="openai: call arguments as JSON text (the OpenAI format, default) or as objects",
    )
    export.add_argument("--with-ids", action="store_true", help="add each sample's id")
    export.add_argument("--json", action="store_true", help="print the export report as JSON")
    export.set_defaults(handler=cmd_export)

    evaluate = add("eval", help="evaluate a model")
    evals = evaluate.add_subparsers(dest="evaluation", required=True)
    hall = evals.add_parser(
        "hallucination", parents=[common], help="H_ReAct, H_General, HScore and correct calls (Agent-H style)"
    )
    hall.add_argument("--model", help="local Hugging Face model directory to generate answers")
    hall.add_argument("--data", help="agentmill output directory with the evaluation cases")
    hall.add_argument("--responses", help="JSONL of answers made elsewhere: {id, response} or {case, response}")
    hall.add_argument("--per-case", type=int, default=None, help="at most N items per case")
    hall.add_argument("--max-new-tokens", type=int, default=64)
    hall.add_argument("--keywords", help="YAML/JSON with react_keywords and general_phrases")
    hall.add_argument("--output", default="hallucination.json", help="where to write the JSON report")
    hall.add_argument("--save-responses", help="also write the generated answers as JSONL")
    hall.set_defaults(handler=cmd_eval_hallucination)
    return parser


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    own, beam_args = split_beam_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    try:
        if args.command == "run":
            return cmd_run(args, beam_args)
        if beam_args:
            parser.error("Beam options after '--' are only for 'run'")
        return args.handler(args)
    except AgentmillError as exc:
        if args.debug:
            raise
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 1 if isinstance(exc, RunError) else 2
    except KeyboardInterrupt:
        console.print("[red]interrupted, nothing published[/]", highlight=False)
        return 130


_command_process = False
#: Allocations between two young-generation collections in the ``agentmill`` process (Python's
#: default: 700). A run builds its graph and runner state out of hundreds of thousands of small
#: objects that live until it ends; with the default, the demo run made about 400 young and 35
#: middle-generation collections that walked them again and again (0.13-0.16 s of about 2.5 s).
#: Garbage without cycles is freed as before; cycles wait for at most this many allocations.
GC_YOUNG_THRESHOLD = 10_000


def _freeze_imports() -> None:
    """In the ``agentmill`` process (:func:`command`), freeze what a command has imported since
    (``run`` imports Beam and the plan's step modules), as :func:`command` froze the CLI's own."""
    if _command_process:
        gc.freeze()


def command() -> None:
    """The ``agentmill`` command (and ``python -m pipelines.cli``): :func:`main` in a process that
    runs one command and exits with its status.

    Everything imported lives as long as the process, so it is frozen out of the garbage
    collector's reach (``gc.freeze``): the CLI's own imports here, and what ``run`` imports
    (Beam, pyarrow, the steps: about 160,000 objects) once it has (:func:`_freeze_imports`).
    Full collections no longer walk them, during the run or at exit (about 0.5 s of the demo
    run's 3.8 s). :func:`main` itself does not freeze, as tests and library users call it in
    processes that live on. The process also collects its young generation less often
    (:data:`GC_YOUNG_THRESHOLD`)."""
    global _command_process
    _command_process = True
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    sys.exit(main())


if __name__ == "__main__":
    command()
