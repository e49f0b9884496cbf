"""report.html: one self-contained, deterministic page about an output directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.report import render_html, write_html_report
from schemas import Manifest
from tests.helpers import read_chat_write, rejected, run, write_spec

REPO = Path(__file__).resolve().parent.parent
XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "demo"
    run(REPO / "pipelines" / "demo.yaml", out)
    return out


def manifest_of(directory: Path) -> Manifest:
    return Manifest.model_validate_json((directory / "manifest.json").read_text())


def test_a_run_writes_a_self_contained_report(demo):
    page = (demo / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<script\b", page, re.I)
    assert not re.search(r"<link\b|@import|url\(\s*['\"]?(https?:|//)", page, re.I)
    assert "<style>" in page


def test_report_holds_dag_ledger_reasons_and_ratios(demo):
    page = (demo / "report.html").read_text(encoding="utf-8")
    manifest = manifest_of(demo)
    for step in manifest.spec["steps"]:
        assert f'id="step-{step["id"]}"' in page
        ledger = manifest.steps[step["id"]]
        assert f"in {ledger.in_:,} → out {ledger.emitted:,}" in page
    reasons = {r for ledger in manifest.steps.values() for r in (*ledger.filtered, *ledger.dead_letter)}
    assert reasons == {"not_selected", "no_tool_call", "excluded_task", "declines_request", "answerable_without_answer"}
    for reason in reasons:
        assert f"<b>{reason}</b>" in page
    example = rejected(demo, "negatives")[0]
    assert example["record_id"] in page
    seconds = manifest.run["step_seconds"]
    assert seconds and set(seconds) <= {*manifest.steps, "run", "publish_audit"}
    assert '<th class="num">step s</th>' in page
    for case in manifest.ratios["negatives"]["target"]:
        assert case in page
    assert "negatives: negatives per case" in page
    assert "balance: capability share of tokens" in page and "balance: capability share of turns" in page
    for capability in manifest.ratios["balance"]["tokens"]["target_share"]:
        assert capability in page
    assert "align: keep-format share" in page
    # DAG + 4 ratio charts + 2 histogram figures
    assert page.count("<svg") >= 7


def test_report_histograms_and_sample_browser(demo):
    page = (demo / "report.html").read_text(encoding="utf-8")
    assert "tokens per sample" in page and "supervised tokens per sample" in page
    for kind in manifest_of(demo).output.by_kind:
        assert f'<details class="sample"><summary><b>{kind}</b>' in page
    assert page.count('<details class="sample">') == 2 * len(manifest_of(demo).output.by_kind)


def test_report_is_byte_identical_when_written_again(demo, tmp_path):
    first = (demo / "report.html").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").read_bytes() == first


def test_report_command_needs_an_output_directory(tmp_path):
    assert main(["report", str(tmp_path)]) == 2


def test_dead_letter_payloads_are_escaped(tmp_path):
    good = {"id": "os_1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello."}]}
    (tmp_path / "data.jsonl").write_text(json.dumps(good) + "\n" + '{"id": "x", ' + XSS + "\n")
    spec = write_spec(tmp_path, read_chat_write("agentinstruct", "data.jsonl"))
    run(spec, tmp_path / "out")
    assert [d["reason"] for d in rejected(tmp_path / "out", "read")] == ["invalid_json"]
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "invalid_json" in page
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert not re.search(r"<script\b", page, re.I)


def test_mix_ratios_are_charted(demo):
    manifest = manifest_of(demo)
    manifest.ratios["mix"] = {
        "unit": "samples",
        "target_eta": 0.2,
        "achieved_eta": 0.21,
        "available_eta": 0.4,
        "groups": {
            "agent_in": {"side": "agent", "target_share_of_side": 1.0, "achieved_share_of_side": 1.0},
            "chat[gpt4]": {"side": "general", "target_share_of_side": 0.2, "achieved_share_of_side": 0.19},
            "chat[other]": {"side": "general", "target_share_of_side": 0.8, "achieved_share_of_side": 0.81},
        },
    }
    page = render_html(str(demo), manifest)
    assert "mix: eta (agent share of samples)" in page
    assert "mix: source shares within their side" in page
    assert "chat[gpt4] (general)" in page
    assert page == render_html(str(demo), manifest)


def test_a_manifest_without_ratios_or_rows_still_renders(demo, tmp_path):
    manifest = manifest_of(demo)
    manifest.ratios = {}
    manifest.output.shards = []
    page = render_html(str(tmp_path), manifest)
    assert "No step in this run reports ratios." in page
    assert "The output holds no samples." in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_loads_in_a_real_browser(demo, tmp_path):
    if _chromium() is None:
        message = "no chromium on PATH (apt-get install chromium to run this test)"
        if os.environ.get("AGENTMILL_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    page = demo / "report.html"
    flags = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") >= 7
    assert "balance: capability share of tokens" in dom.stdout
    for marker in ("Uncaught", "ERROR:CONSOLE"):
        assert marker not in dom.stderr
    png = tmp_path / "report.png"
    shot = subprocess.run(
        [*flags, "--window-size=1280,2000", f"--screenshot={png}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_html_report_reads_the_manifest(demo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    assert write_html_report(str(copy)) == str(copy / "report.html")
