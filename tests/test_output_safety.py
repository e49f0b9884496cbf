"""Output safety (issue 15): one run per output, nothing published by a run that failed, no file
agentmill did not write ever deleted, no output read back as input, a previous output that
survives a crash at any moment of publishing, training that never mixes two runs, and one-line
errors (exit 2) instead of tracebacks for unusable outputs; Ctrl-C exits 130."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pipelines.publish as publish_module
from pipelines import storage
from pipelines.cli import main
from pipelines.errors import OutputError, RunError, SpecError
from pipelines.publish import MARKER, prepare, publish, work_dir_for
from schemas import Sample
from tests.conftest import DEMO_DATA, REPO
from tests.helpers import PUBLISH_ANYWAY, read_chat_write, run, shard_hashes, write_spec
from transforms.base import RecordStep, StepConfig

GOOD = (DEMO_DATA / "agentinstruct_sample.jsonl").read_text().splitlines()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """The CLI's messages on one line whatever their length (rich wraps at 80 columns otherwise)."""
    import pipelines.cli

    monkeypatch.setattr(pipelines.cli.console, "width", 10_000)


def _lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.agentmill-lock"


def _spec(tmp_path: Path, data: str = "data.jsonl", **kwargs: Any) -> Path:
    return write_spec(tmp_path, read_chat_write("agentinstruct", data), **kwargs)


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A spec over good data, its published output and the output's shard hashes."""
    (tmp_path / "data.jsonl").write_text("\n".join(GOOD) + "\n")
    spec = _spec(tmp_path)
    run(spec, tmp_path / "out")
    return spec, tmp_path / "out", shard_hashes(tmp_path / "out")


# --- 1. two runs to the same output -----------------------------------------------------------


def test_a_second_run_to_a_locked_output_refuses_and_touches_nothing(published):
    spec, out, hashes = published
    # The first run holds the lock and is writing its working directory.
    work = Path(work_dir_for(str(out)))
    work.mkdir()
    (work / MARKER).write_text("incomplete\n")
    (work / "data-00000-of-00002.arrow").write_bytes(b"the first run's shard, half written")
    with open(_lock_path(out), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError, match="another agentmill run is writing") as info:
            run(spec, out)
        assert str(out) in str(info.value)
        assert (work / "data-00000-of-00002.arrow").read_bytes() == b"the first run's shard, half written"
        assert shard_hashes(out) == hashes
    shutil.rmtree(work)  # as the first run would have, by publishing
    run(spec, out)  # the lock is free again
    assert shard_hashes(out) == hashes and not _lock_path(out).exists()


def test_the_cli_refuses_a_locked_output_with_exit_2(published):
    spec, out, hashes = published
    with open(_lock_path(out), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "run", str(spec), "-o", str(out), "-q"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 2, result.stderr
    assert "another agentmill run is writing" in result.stderr and str(out) in result.stderr
    assert "Traceback" not in result.stderr
    assert shard_hashes(out) == hashes


def test_a_remote_output_is_locked_too(tmp_path):
    from tests.fake_remote_fs import PREFIX, local_path

    (tmp_path / "data.jsonl").write_text("\n".join(GOOD) + "\n")
    spec = _spec(tmp_path)
    remote = f"{PREFIX}{tmp_path.name}/out"
    lock = publish_module.lock_path_for(remote)
    holder = {"host": "another-host", "pid": 1, "since": "2026-01-01T00:00:00Z"}
    storage.write_text(lock, json.dumps(holder))
    with pytest.raises(OutputError, match=r"another agentmill run is writing .*another-host"):
        run(spec, remote)
    assert not Path(local_path(remote)).exists()
    # A lock left by a process of this host that is gone (a killed run) is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.write_text(lock, json.dumps({**holder, "host": socket.gethostname(), "pid": dead.pid}))
    run(spec, remote)
    assert (Path(local_path(remote)) / "manifest.json").exists()
    assert not Path(local_path(lock)).exists()  # released


def test_a_filesystem_without_locks_is_a_one_line_error(tmp_path, monkeypatch):
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with (
        pytest.raises(OutputError, match=r"cannot lock .*No locks available"),
        publish_module.lock_output(str(tmp_path / "out")),
    ):
        pass


# --- 4. a run in which everything fails is not published --------------------------------------


class ExplodeConfig(StepConfig):
    pass


class Explode:
    def __call__(self, sample: Sample) -> Iterator[Sample]:
        raise ZeroDivisionError("a bug in a custom step")


class ExplodingStep(RecordStep):
    """A custom step that raises on every record."""

    type_name = "explode"
    config_model = ExplodeConfig
    input_type = Sample
    output_type = Sample

    def processor(self) -> Explode:
        return Explode()


def test_a_run_where_every_record_fails_keeps_the_previous_output(published, capsys):
    spec, out, hashes = published
    (spec.parent / "data.jsonl").write_text("{not json\n" * 4)
    assert main(["run", str(spec), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "nothing was published" in err and "has no rows to publish" in err
    assert "step 'read': 4 of 4 records are dead letters" in err and "invalid_json 4" in err
    assert shard_hashes(out) == hashes
    assert json.loads((out / "manifest.json").read_text())["output"]["num_rows"] == len(GOOD)


def test_an_empty_input_publishes_an_empty_dataset_when_allowed(tmp_path):
    """No record reaches ``write``: the pipeline writes no shard (its list of shards is empty,
    not written), and the run still accounts for every step and publishes the empty shards."""
    (tmp_path / "data.jsonl").write_text("")
    out = tmp_path / "out"
    summary = run(_spec(tmp_path, publish=PUBLISH_ANYWAY), out)
    assert summary.manifest.output.num_rows == 0
    steps = summary.manifest.steps
    assert (steps["read"].in_, steps["read"].dead_letter) == (1, {"empty_file": 1})
    assert (steps["chat"].in_, steps["write"].in_) == (0, 0)
    assert sorted(shard_hashes(out)) == ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]


def test_a_custom_step_that_raises_on_every_record_publishes_nothing(published):
    spec, out, hashes = published
    steps = read_chat_write("agentinstruct", "data.jsonl")
    steps.insert(2, {"id": "boom", "type": "tests.test_output_safety:ExplodingStep", "inputs": ["chat"]})
    steps[3]["inputs"] = ["boom"]
    boom = write_spec(spec.parent, steps, name="boom")
    with pytest.raises(RunError, match=r"step 'boom': 5 of 5 records are dead letters .*unexpected_error 5"):
        run(boom, out)
    assert shard_hashes(out) == hashes


def test_the_dead_letter_bound_is_configurable_and_the_cli_can_lift_the_guard(tmp_path, capsys):
    lines = [*GOOD[:2], "{bad", "{bad", "{bad"]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(RunError, match=r"step 'read': 3 of 5 records are dead letters \(60% > max_dead_letter_share"):
        run(_spec(tmp_path), out)
    assert not out.exists()
    summary = run(_spec(tmp_path, publish={"max_dead_letter_share": 0.6}), out)
    assert summary.manifest.output.num_rows == 2
    assert summary.manifest.spec["publish"] == {"allow_empty": False, "max_dead_letter_share": 0.6}
    # nothing but bad records: the CLI's flags publish it anyway (an empty output)
    (tmp_path / "data.jsonl").write_text("{bad\n")
    spec = _spec(tmp_path)
    assert main(["run", str(spec), "-o", str(out), "-q", "--allow-empty"]) == 1  # still 100 % dead letters
    capsys.readouterr()
    assert main(["run", str(spec), "-o", str(out), "-q", "--allow-empty", "--max-dead-letter-share", "1"]) == 0
    assert json.loads((out / "manifest.json").read_text())["output"]["num_rows"] == 0
    with pytest.raises(SystemExit) as info:
        main(["run", str(spec), "-o", str(out), "--max-dead-letter-share", "2"])
    assert info.value.code == 2  # argparse: not between 0 and 1


def test_the_publish_block_is_strict_and_a_default_one_keeps_the_spec_hash(tmp_path):
    from pipelines.graph import load_plan

    (tmp_path / "data.jsonl").write_text("\n".join(GOOD) + "\n")
    plain = load_plan(str(_spec(tmp_path))).spec_hash
    explicit = load_plan(str(_spec(tmp_path, publish={"allow_empty": False, "max_dead_letter_share": 0.5})))
    assert explicit.spec_hash == plain
    with pytest.raises(SpecError, match="publish"):
        load_plan(str(_spec(tmp_path, publish={"allow_empty": "yes"})))
    with pytest.raises(SpecError, match="publish"):
        load_plan(str(_spec(tmp_path, publish={"max_dead_letter_share": 1.5})))


# --- 5. files agentmill did not write ---------------------------------------------------------


def test_a_rerun_never_deletes_files_agentmill_did_not_write(published, capsys):
    spec, out, hashes = published
    (out / "my-model").mkdir()
    (out / "my-model" / "weights.bin").write_bytes(b"\x00weights")
    (out / "NOTES.txt").write_text("my notes\n")
    assert main(["run", str(spec), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "holds files agentmill did not write" in err and "NOTES.txt" in err and "my-model/" in err
    assert (out / "my-model" / "weights.bin").read_bytes() == b"\x00weights"
    assert (out / "NOTES.txt").read_text() == "my notes\n"
    assert shard_hashes(out) == hashes
    assert not Path(work_dir_for(str(out))).exists()
    # without them, the rerun replaces agentmill's own files as before
    (out / "NOTES.txt").unlink()
    shutil.rmtree(out / "my-model")
    run(spec, out)
    assert shard_hashes(out) == hashes


def test_files_added_while_a_run_works_are_not_deleted_by_its_publish(published):
    _, out, _ = published
    work = prepare(str(out))
    (Path(work) / "manifest.json").write_text(json.dumps({"agentmill_version": "new"}))
    (out / "NOTES.txt").write_text("written during the run\n")
    with pytest.raises(OutputError, match=r"NOTES\.txt"):
        publish(work, str(out))
    assert (out / "NOTES.txt").exists() and json.loads((out / "manifest.json").read_text())["name"] == "test"


# --- 8. an output inside an input glob --------------------------------------------------------


def test_an_output_that_its_own_inputs_would_read_back_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("\n".join([*GOOD, "{bad"]) + "\n")
    spec = _spec(tmp_path, "data/**.jsonl")
    with pytest.raises(SpecError, match=r"matches .*out/rejected/read\.jsonl.*read its own output") as info:
        run(spec, data / "out")
    assert info.value.step_id == "read"
    assert not (data / "out").exists() and not (data / ".out.agentmill-tmp").exists()
    # an input file already inside the output is refused too, whatever the pattern
    (tmp_path / "elsewhere").mkdir()
    run(_spec(tmp_path, "data/a.jsonl", name="exact"), tmp_path / "elsewhere" / "out")
    rejected_file = "elsewhere/out/rejected/read.jsonl"
    with pytest.raises(SpecError, match="lies inside the output"):
        run(_spec(tmp_path, ["data/a.jsonl", rejected_file], name="both"), tmp_path / "elsewhere" / "out")
    assert main(["run", str(spec), "-o", str(data / "out"), "-q"]) == 2


# --- 10. a crash at each moment of publishing -------------------------------------------------


class Crash(BaseException):
    """The process dies here (not an Exception: nothing may catch and tidy up)."""


def _fake_output(directory: Path, tag: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shard = "data-00000-of-00001.arrow"
    (directory / shard).write_text(tag)
    manifest = {"agentmill_version": "test", "name": tag, "output": {"shards": [{"filename": shard}]}, "steps": {}}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _tag(directory: Path) -> str | None:
    try:
        return json.loads((directory / "manifest.json").read_text())["name"]
    except (OSError, ValueError):
        return None


#: The file operations of a local publish, in order.
PUBLISH_STEPS = ["remove marker", "move old aside", "move new in place", "delete old"]


@pytest.mark.parametrize("crash_at", range(len(PUBLISH_STEPS) + 1), ids=[*PUBLISH_STEPS, "old half deleted"])
def test_a_crash_at_any_step_of_publishing_never_loses_the_previous_output(tmp_path, monkeypatch, crash_at):
    out = tmp_path / "out"
    _fake_output(out, "old")
    work = Path(prepare(str(out)))
    _fake_output(work, "new")
    old = Path(f"{work}.old")
    calls = {"n": 0}

    def crashing(real):
        def call(*args, **kwargs):
            if calls["n"] == crash_at:
                raise Crash
            calls["n"] += 1
            return real(*args, **kwargs)

        return call

    def half_delete(path, *args, **kwargs):
        (Path(path) / "manifest.json").unlink()  # the first file goes, then the process dies
        raise Crash

    monkeypatch.setattr(os, "remove", crashing(os.remove))
    monkeypatch.setattr(os, "rename", crashing(os.rename))
    monkeypatch.setattr(shutil, "rmtree", half_delete if crash_at == len(PUBLISH_STEPS) else crashing(shutil.rmtree))
    with pytest.raises(Crash):
        publish(str(work), str(out))
    monkeypatch.undo()
    # At the crash, one complete output exists: the published one, or the previous one moved aside.
    assert _tag(out) in ("old", "new") or _tag(old) == "old"
    # The next run recovers before it starts: an output is in place and nothing is left aside.
    next_work = prepare(str(out))
    assert _tag(out) == ("old" if crash_at < PUBLISH_STEPS.index("move new in place") + 1 else "new")
    assert (out / "data-00000-of-00001.arrow").read_text() == _tag(out)
    assert not old.exists() and os.listdir(next_work) == [MARKER]


def test_recovery_puts_a_moved_aside_output_back_before_a_new_run_can_fail(tmp_path):
    """The state of the issue: new output complete in the working folder without its marker, the
    old output moved aside, no output. The next run must not delete the old output."""
    out = tmp_path / "out"
    work = Path(work_dir_for(str(out)))
    _fake_output(Path(f"{work}.old"), "old")
    _fake_output(work, "new")
    prepare(str(out))
    assert _tag(out) == "old" and not Path(f"{work}.old").exists()


def test_a_remote_publish_that_died_while_moving_files_is_finished_by_the_next_run(tmp_path):
    """Object stores move file by file, manifest last: a run that died mid-move left the new
    output split between the working prefix and the output, the earlier one already deleted."""
    from tests.fake_remote_fs import PREFIX, local_path

    remote = f"{PREFIX}{tmp_path.name}/out"
    work = work_dir_for(remote)
    local_out, local_work = Path(local_path(remote)), Path(local_path(work))
    _fake_output(local_work, "new")
    local_out.mkdir(parents=True)
    os.replace(local_work / "data-00000-of-00001.arrow", local_out / "data-00000-of-00001.arrow")  # moved first
    new_work = prepare(remote)
    assert _tag(local_out) == "new" and (local_out / "data-00000-of-00001.arrow").read_text() == "new"
    assert storage.files_under(new_work) == [f"{new_work}/{MARKER}"]


# --- 14. one-line errors for unusable outputs; Ctrl-C ------------------------------------------


def test_an_output_that_is_a_symlink_is_a_one_line_error(published, capsys):
    spec, out, hashes = published
    link = out.parent / "link"
    link.symlink_to(out)
    assert main(["run", str(spec), "-o", str(link), "-q"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(link) in err and "Traceback" not in err
    assert link.is_symlink() and shard_hashes(out) == hashes


def test_a_read_only_output_location_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "data.jsonl").write_text("\n".join(GOOD) + "\n")
    spec = _spec(tmp_path)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_makedirs, real_open = os.makedirs, os.open

    def denied(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(readonly)) and not os.path.isdir(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "makedirs", denied(real_makedirs))  # tests run as root: chmod would not stop them
    monkeypatch.setattr(os, "open", denied(real_open))
    assert main(["run", str(spec), "-o", str(readonly / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and str(readonly) in err and "read-only" in err and "Traceback" not in err


def test_disk_full_while_publishing_is_a_one_line_error_and_keeps_the_previous_output(published, monkeypatch, capsys):
    spec, out, hashes = published
    real = storage.write_text

    def full(path: str, text: str) -> None:
        if path.endswith("manifest.json"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(path, text)

    monkeypatch.setattr(storage, "write_text", full)
    assert main(["run", str(spec), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "manifest.json" in err and "nothing was published" in err
    assert "Traceback" not in err
    assert shard_hashes(out) == hashes
    assert not Path(work_dir_for(str(out))).exists()  # the space it took is given back


def test_the_current_directory_as_output_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "data.jsonl").write_text("\n".join(GOOD) + "\n")
    spec = _spec(tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["run", str(spec), "-o", ".", "-q"]) == 2
    err = capsys.readouterr().err
    assert "current directory" in err and str(here) in err
    assert here.is_dir() and os.getcwd() == str(here) and os.listdir(here) == []
    assert main(["run", str(spec), "-o", "..", "-q"]) == 2  # a folder that holds it


def test_ctrl_c_prints_interrupted_nothing_published_and_exits_130(monkeypatch, tmp_path, capsys):
    import pipelines.run

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    (tmp_path / "data.jsonl").write_text("\n".join(GOOD) + "\n")
    monkeypatch.setattr(pipelines.run, "run_plan", interrupted)
    assert main(["run", str(_spec(tmp_path)), "-o", str(tmp_path / "out"), "-q"]) == 130
    assert "interrupted, nothing published" in capsys.readouterr().err


class SlowConfig(StepConfig):
    pass


class Slow:
    def __call__(self, sample: Sample) -> Iterator[Sample]:
        time.sleep(2)
        yield sample


class SlowStep(RecordStep):
    """A custom step slow enough to be interrupted while it runs."""

    type_name = "slow"
    config_model = SlowConfig
    input_type = Sample
    output_type = Sample

    def processor(self) -> Slow:
        return Slow()


def test_sigint_during_a_run_exits_130_and_publishes_nothing(published):
    spec, out, hashes = published
    steps = read_chat_write("agentinstruct", "data.jsonl")
    steps.insert(2, {"id": "slow", "type": "tests.test_output_safety:SlowStep", "inputs": ["chat"]})
    steps[3]["inputs"] = ["slow"]
    slow = write_spec(spec.parent, steps, name="slow")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", str(slow), "-o", str(out), "-q"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    work = Path(work_dir_for(str(out)))
    deadline = time.monotonic() + 300
    while not work.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # into the pipeline
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "interrupted, nothing published" in err and "Traceback" not in err
    assert shard_hashes(out) == hashes and not work.exists() and not _lock_path(out).exists()


# --- 9. training into an existing output ------------------------------------------------------


def _train_args(out: Path, *extra: str):
    from train.config import build_parser

    return build_parser().parse_args(
        ["--data", "d", "--model-config", "c.json", "--tokenizer", "t", "--output", str(out), *extra]
    )


def test_training_into_a_used_output_needs_resume_or_overwrite(tmp_path, capsys):
    from train.config import validate_args

    out = tmp_path / "model"
    (out / "checkpoints" / "step4").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
    (out / "NOTES.txt").write_text("mine\n")
    with pytest.raises(SystemExit) as info:
        validate_args(_train_args(out))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite-output" in err and str(out) in err
    assert (out / "metrics.jsonl").exists()
    validate_args(_train_args(out, "--resume"))  # continuing the run there is what --resume is for
    validate_args(_train_args(tmp_path / "new"))  # a new or empty output needs neither
    validate_args(_train_args(out, "--overwrite-output"))  # starts over: the earlier run's files go
    assert sorted(os.listdir(out)) == ["NOTES.txt"]
    with pytest.raises(SystemExit):
        validate_args(_train_args(out, "--overwrite-output", "--resume"))
