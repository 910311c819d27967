"""Hostile files, lost results and silent no-ops (issue 10), on the command line and in the writers.

Each test runs the CLI with click's CliRunner on the embedded tiny model (or on no model at all: early
checks must fail before one is loaded), reloads what it wrote and compares folder listings, so that a
command writes nothing but the files it names.
"""

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import asymrnr
from asymrnr import _io, archs
from asymrnr.cli import calibrate_command, main, read_prompts, terminal_safe
from asymrnr.models.presets import MODEL_PRESETS
from asymrnr.profiler import load_stats

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny-cogvideox", "--steps", "4"]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


def one_line_error(res, fragment: str) -> None:
    assert res.exit_code != 0, res.output
    assert fragment in res.output, res.output
    assert "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("Error")]) == 1, res.output


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A folder holding a complete calibration of the tiny model (2 prompts, 4 steps). Do not modify it."""
    out = tmp_path_factory.mktemp("reliability") / "out"
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "2", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def results(calibrated, tmp_path):
    """A private copy of the calibrated folder."""
    out = tmp_path / "out"
    shutil.copytree(calibrated, out)
    return out


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command loads a model."""
    import asymrnr.models.presets as presets

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(presets, "load_pipeline", refuse)


# ------------------------------------------------------------------------------------------- writers


def test_atomic_writers_never_follow_a_planted_temp_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    names = iter(["0" * 16, "1" * 16])
    monkeypatch.setattr(_io.secrets, "token_hex", lambda n: next(names))
    planted = tmp_path / f".schedule.json.{'0' * 16}.tmp"
    planted.symlink_to(victim)
    _io.atomic_write_text(tmp_path / "schedule.json", ["{}"])
    assert victim.read_text() == "keep me"
    assert (tmp_path / "schedule.json").read_text() == "{}"
    assert planted.is_symlink() and listing(tmp_path) == sorted([planted.name, "schedule.json", "victim.txt"])


def test_temp_names_are_unpredictable_and_created_exclusively(tmp_path):
    names = {_io.temp_name(tmp_path / "stats.h5").name for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"\.stats\.h5\.[0-9a-f]{16}\.tmp", n) for n in names)
    tmp = _io.exclusive_temp(tmp_path / "stats.h5", ".partial")
    assert tmp.parent == tmp_path and tmp.is_file() and tmp.stat().st_size == 0 and tmp.name.endswith(".partial")


def test_atomic_write_bytes_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "blob.bin"
    _io.atomic_write_bytes(target, [b"\x00old", b"\xff"])
    assert target.read_bytes() == b"\x00old\xff"

    def failing():
        yield b"new"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        _io.atomic_write_bytes(target, failing())
    assert target.read_bytes() == b"\x00old\xff" and listing(tmp_path) == ["blob.bin"]


def test_writers_refuse_fifos_and_folders(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for write in (_io.atomic_write_text, _io.atomic_write_bytes):
        with pytest.raises(_io.OutputPathError, match="FIFO"):
            write(fifo, [] if write is _io.atomic_write_text else [])
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    (tmp_path / "folder").mkdir()
    with pytest.raises(_io.OutputPathError, match="folder"):
        _io.atomic_write_text(tmp_path / "folder", ["x"])
    assert listing(tmp_path) == ["folder", "pipe"]


@pytest.mark.parametrize("path", ["/dev/null", "/dev/stdout", "/proc/self/fd/1"])
def test_check_output_path_refuses_devices_and_process_files(path):
    with pytest.raises(_io.OutputPathError, match="not a regular file"):
        _io.check_output_path(path)


def test_check_output_path_refuses_inputs_by_path_link_and_inode(tmp_path):
    src = tmp_path / "stats.h5"
    src.write_bytes(b"data")
    os.link(src, tmp_path / "hardlink.h5")
    (tmp_path / "symlink.h5").symlink_to(src)
    sub = tmp_path / "sub"
    sub.mkdir()
    for out in (src, tmp_path / "hardlink.h5", tmp_path / "symlink.h5", sub / ".." / "stats.h5"):
        with pytest.raises(_io.OutputPathError, match="also an input"):
            _io.check_output_path(out, inputs=[None, src], option="-o")
    assert _io.check_output_path(tmp_path / "new" / "s.json", inputs=[src]) == tmp_path / "new" / "s.json"
    with pytest.raises(_io.OutputPathError, match="is a file, not a folder"):
        _io.check_output_path(src / "s.json")
    assert src.read_bytes() == b"data"


def test_folder_lock_lets_one_holder_in_and_cleans_up(tmp_path):
    with _io.folder_lock(tmp_path, what="another calibration") as lock:
        assert lock.is_file()
        with pytest.raises(_io.FolderLockedError, match="another calibration is writing into"):
            with _io.folder_lock(tmp_path, what="another calibration"):
                pass
    assert listing(tmp_path) == []
    with _io.folder_lock(tmp_path):
        pass
    (tmp_path / ".asymrnr.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(_io.OutputPathError, match="symbolic link"):
        with _io.folder_lock(tmp_path):
            pass
    assert not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------------------------ outputs and inputs


def test_outputs_that_are_inputs_are_refused(results, tmp_path):
    stats, schedule = results / "stats.h5", results / "schedule.json"
    os.link(stats, tmp_path / "alias.h5")
    before, files = listing(tmp_path), contents(results)
    runner = CliRunner()
    for args in (
        ["plan", str(stats), "-o", str(stats)],
        ["plan", str(stats), "-o", str(tmp_path / "alias.h5")],
        ["report", str(stats), "-o", str(stats)],
        ["report", str(stats), "--schedule", str(schedule), "-o", str(schedule)],
    ):
        one_line_error(runner.invoke(main, args), "is also an input")
    assert listing(tmp_path) == before and contents(results) == files


def test_outputs_that_are_fifos_are_refused(results, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    runner = CliRunner()
    one_line_error(runner.invoke(main, ["plan", str(results / "stats.h5"), "-o", str(fifo)]), "FIFO")
    one_line_error(runner.invoke(main, ["report", str(results / "stats.h5"), "-o", str(fifo)]), "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ----------------------------------------------------------------------------- calibrating into a folder


def test_a_folder_with_results_is_refused_naming_overwrite_and_resume(results, no_model):
    before, files = listing(results), contents(results)
    res = CliRunner().invoke(calibrate_command, [*TINY, "--out", str(results)])
    one_line_error(res, "--overwrite")
    assert "--resume" in res.output
    assert listing(results) == before and contents(results) == files


def test_a_failed_overwrite_leaves_the_old_results(results, monkeypatch):
    import asymrnr.planner

    def explode(*args, **kwargs):
        raise RuntimeError("planner crashed")

    monkeypatch.setattr(asymrnr.planner, "plan_schedule", explode)
    before, files = listing(results), contents(results)
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "1", "--overwrite", "--out", str(results)])
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)
    assert listing(results) == before and contents(results) == files  # no staging folder, no lock left
    assert "left as they were" in res.output


def test_overwrite_replaces_the_whole_set(results):
    (results / "schedule-stale.json").write_bytes((results / "schedule.json").read_bytes())
    (results / "notes.txt").write_text("mine")
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "1", "--seed", "5", "--overwrite",
                                                 "--out", str(results)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    stats = load_stats(results / "stats.h5")
    assert stats.num_runs == 1 and [int(s) for s in stats.seeds] == [5]
    schedule = asymrnr.load_schedule(results / "schedule.json")
    assert listing(results) == sorted(["notes.txt", "report.html", "schedule.json", f"schedule-{schedule.tag}.json",
                                       "stats.h5"])
    assert asymrnr.load_schedule(results / f"schedule-{schedule.tag}.json").tag == schedule.tag
    assert str(results / "stats.h5") in (results / "report.html").read_text(encoding="utf-8")
    for name in ("report.html", "schedule.json"):
        assert ".asymrnr-staging" not in (results / name).read_text(encoding="utf-8")


def test_resume_profiles_only_the_missing_prompts(results, calibrated):
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "3", "--resume", "--out", str(results)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 of 3 run(s) already in" in res.output and "1 to profile" in res.output
    old, new = load_stats(calibrated / "stats.h5"), load_stats(results / "stats.h5")
    assert new.num_runs == 3 and new.prompts == read_prompts(None, 3)
    assert [int(s) for s in new.seeds] == [0, 1, 2]
    np.testing.assert_array_equal(new.sim_mean["euclidean"][:2], old.sim_mean["euclidean"])
    assert asymrnr.load_schedule(results / "schedule.json").num_steps == 4


def test_resume_with_every_run_present_only_plans_again(results, calibrated, no_model):
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "2", "--resume", "--out", str(results)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "loading" not in res.output and "0 to profile" in res.output
    assert (results / "stats.h5").read_bytes() == (calibrated / "stats.h5").read_bytes()

    # fewer prompts: the runs that are not asked for are dropped, the others kept as they were
    res = CliRunner().invoke(calibrate_command, [*TINY, "--num-prompts", "1", "--resume", "--out", str(results)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    old, new = load_stats(calibrated / "stats.h5"), load_stats(results / "stats.h5")
    assert new.num_runs == 1 and new.prompts == old.prompts[:1]
    np.testing.assert_array_equal(new.norm_hist, old.norm_hist[:1])
    assert sorted(p.name for p in results.iterdir() if p.name.startswith(".")) == []


def test_resume_refuses_other_settings_before_loading(results, no_model):
    files = contents(results)
    res = CliRunner().invoke(calibrate_command, [*TINY[:2], "--steps", "6", "--resume", "--out", str(results)])
    one_line_error(res, "num_steps = 4")
    assert "--overwrite" in res.output and contents(results) == files


def test_a_locked_folder_fails_at_once(results, no_model):
    files = contents(results)
    with _io.folder_lock(results, ".asymrnr.lock"):
        res = CliRunner().invoke(calibrate_command, [*TINY, "--overwrite", "--out", str(results)])
    one_line_error(res, "another calibration is writing into")
    assert contents(results) == files and ".asymrnr.lock" not in listing(results)


# --------------------------------------------------------------------------------------- early failures


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "{nul}"], "control character \\x00"),
        (["--prompts", "{esc}"], "line 2: the prompt holds the control character \\x1b"),
        (["--prompts", "{comments}"], "holds no prompts"),
        (["--seed", "-1"], "[0, 2**63 - 1]"),
        (["--seed", str(2**64)], "[0, 2**63 - 1]"),
        (["--seed", str(2**63 - 1)], f"--seed must be at most {2**63 - 2}"),
        (["--guidance", "nan"], "finite number >= 0"),
        (["--guidance", "inf"], "finite number >= 0"),
        (["--guidance", "-0.5"], "finite number >= 0"),
        (["--target-speedup", "nan"], "above 1.0"),
        (["--target-speedup", "inf"], "above 1.0"),
        (["--target-speedup", "1.0"], "above 1.0"),
        (["--height", "50"], "multiples of 16"),
        (["--frames", "10"], "4k+1"),
        (["--steps", "0"], "must be positive"),
        (["--model", "cogvideox-7b"], "known models: " + ", ".join(MODEL_PRESETS)),
        (["--model-path", "{missing}"], "does not exist"),
        (["--model-path", "{no_index}"], "has no model_index.json"),
        (["--out", "{file}/sub"], "is a file, not a folder"),
        (["--overwrite", "--resume"], "exclude each other"),
    ],
)
def test_bad_inputs_fail_before_anything_is_loaded_or_written(args, message, tmp_path, no_model):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "nul.txt").write_bytes(b"a red fox\x00 in snow\n")
    (inputs / "esc.txt").write_text("a red fox\n\x1b[2Ja cat\n", encoding="utf-8")
    (inputs / "comments.txt").write_text("# nothing\n\n   \n", encoding="utf-8")
    (inputs / "no_index").mkdir()
    (inputs / "file").write_text("x")
    fill = {"nul": inputs / "nul.txt", "esc": inputs / "esc.txt", "comments": inputs / "comments.txt",
            "missing": inputs / "missing", "no_index": inputs / "no_index", "file": inputs / "file"}
    args = [a.format(**fill) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    before = listing(tmp_path)
    res = CliRunner().invoke(calibrate_command, [*TINY, *args])
    one_line_error(res, message)
    assert listing(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_fails_before_loading(tmp_path, no_model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = CliRunner().invoke(calibrate_command, [*TINY, "--out", str(ro / "sub")])
        one_line_error(res, "not writable")
    finally:
        ro.chmod(0o755)


def test_prompts_keep_tabs_and_drop_a_bom(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa red fox\tin snow\r\n# comment\r\na cat\r\n".encode("utf-8"))
    assert read_prompts(str(path), None) == ["a red fox\tin snow", "a cat"]


# ------------------------------------------------------------------------------------------ file kinds


def test_inspect_tells_the_kind_of_file_by_content(calibrated, tmp_path):
    runner = CliRunner()
    shutil.copyfile(calibrated / "stats.h5", tmp_path / "stats.json")
    res = runner.invoke(main, ["inspect", str(tmp_path / "stats.json")])
    assert res.exit_code == 0 and "asymrnr statistics" in res.output and "runs:" in res.output, res.output

    shutil.copyfile(calibrated / "schedule.json", tmp_path / "schedule.h5")
    tag = asymrnr.load_schedule(calibrated / "schedule.json").tag
    res = runner.invoke(main, ["inspect", str(tmp_path / "schedule.h5")])
    assert res.exit_code == 0 and f"schedule {tag}" in res.output, res.output

    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all")
    res = runner.invoke(main, ["inspect", str(tmp_path / "broken.h5")])
    one_line_error(res, "damaged or truncated")
    assert "schedule file" not in res.output and "is not an asymrnr schedule (JSON) or statistics file (HDF5)" in res.output

    (tmp_path / "empty.h5").write_bytes(b"")
    one_line_error(runner.invoke(main, ["inspect", str(tmp_path / "empty.h5")]), "empty (0 bytes)")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    one_line_error(runner.invoke(main, ["inspect", str(tmp_path / "other.json")]), "not an asymrnr schedule")


def test_a_stats_file_where_a_schedule_is_expected_says_what_it_is(calibrated, tmp_path):
    runner = CliRunner()
    stats, schedule = calibrated / "stats.h5", calibrated / "schedule.json"
    res = runner.invoke(main, ["report", str(stats), "--schedule", str(stats), "-o", str(tmp_path / "r.html")])
    one_line_error(res, "is an asymrnr statistics file (HDF5), not a schedule")
    assert "asymrnr plan" in res.output
    res = runner.invoke(main, ["plan", str(schedule), "-o", str(tmp_path / "s.json")])
    one_line_error(res, "is an asymrnr schedule (JSON), not a statistics file")
    res = runner.invoke(main, ["report", str(schedule), "-o", str(tmp_path / "r.html")])
    one_line_error(res, "not a statistics file")
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------------- the profile command


def test_messages_name_only_commands_that_exist():
    named = set()
    for path in (REPO / "src" / "asymrnr").rglob("*.py"):
        named |= set(re.findall(r"`asymrnr ([a-z][a-z-]*)", path.read_text(encoding="utf-8")))
    assert "profile" in named
    assert named <= set(main.commands), named - set(main.commands)
    profile_opts = {opt for p in main.commands["profile"].params for opt in p.opts}
    assert {"-o", "--out", "--append", "--model", "--prompts", "--seed"} <= profile_opts


def test_profile_writes_only_its_file_and_appends_on_request(tmp_path, monkeypatch):
    runner = CliRunner()
    target = tmp_path / "s.h5"
    args = ["profile", *TINY, "--num-prompts", "1", "-o", str(target)]
    res = runner.invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert listing(tmp_path) == ["s.h5"] and load_stats(target).num_runs == 1

    one_line_error(runner.invoke(main, args), "--append")
    res = runner.invoke(main, [*args[:-2], "--seed", "7", "-o", str(target), "--append"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    stats = load_stats(target)
    assert stats.num_runs == 2 and [int(s) for s in stats.seeds] == [0, 7] and listing(tmp_path) == ["s.h5"]

    import asymrnr.models.presets as presets

    monkeypatch.setattr(presets, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    res = runner.invoke(main, ["profile", *TINY[:2], "--steps", "6", "--append", "-o", str(target)])
    one_line_error(res, "num_steps = 4")
    assert load_stats(target).num_runs == 2


# ---------------------------------------------------------------------------------- terminal escaping


def test_terminal_safe_escapes_what_a_terminal_acts_on():
    assert terminal_safe("a\x1b[2Jb\x07\x00\x7f\x9b") == "a\\x1b[2Jb\\x07\\x00\\x7f\\x9b"
    assert terminal_safe("x\u202ey\u2028z\rw\n") == "x\\u202ey\\u2028z\\x0dw\\x0a"
    assert terminal_safe("one\ttwo\nthree\x1b", multiline=True) == "one\ttwo\nthree\\x1b"
    assert terminal_safe("Ünïcode ✓ 中文") == "Ünïcode ✓ 中文"


def test_inspect_escapes_notes_of_a_schedule(calibrated, tmp_path):
    doc = json.loads((calibrated / "schedule.json").read_text(encoding="utf-8"))
    doc["provenance"]["notes"] = "\x1b[2J\x1b[32mall good\x1b[0m\u202e"
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\u202e" not in res.output
    assert "\\x1b[2J\\x1b[32mall good" in res.output


def test_inspect_escapes_prompts_of_a_stats_file(calibrated, tmp_path):
    from asymrnr.cli import _copy_runs
    from asymrnr.errors import StatsFormatError

    stats = load_stats(calibrated / "stats.h5")
    stats.prompts = ["\x1b]0;owned\x07\x1b[2Jclear screen", stats.prompts[1]]
    path = tmp_path / "hostile.h5"
    try:
        _copy_runs(stats, [0], calibrated / "stats.h5", path)
    except StatsFormatError as err:  # a writer that refuses such prompts leaves nothing to print
        pytest.skip(f"the stats writer refuses control characters: {err}")
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert "\\x1b]0;owned\\x07\\x1b[2Jclear screen" in res.output


def test_errors_escape_file_names(tmp_path):
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "evil\x1b[2J.h5")])
    one_line_error(res, "evil\\x1b[2J.h5")
    assert "\x1b" not in res.output


# ------------------------------------------------------------------------------------ presets and CI


def test_presets_are_data_and_the_cli_names_no_model():
    for preset in MODEL_PRESETS.values():
        assert preset.family in archs.families()
        assert set(preset.architecture) == {"num_blocks", "num_heads", "head_dim", "patch_size_t", "rope"}
        assert archs.get(preset.family).generation_rules().check(preset.height, preset.width, preset.num_frames) is None
        assert preset.to_dict()["family"] == preset.family
    source = (REPO / "src" / "asymrnr" / "cli.py").read_text(encoding="utf-8").lower()
    for word in {*MODEL_PRESETS, *archs.families()}:
        assert not re.search(rf"\b{re.escape(word.lower())}\b", source), word
    res = CliRunner().invoke(calibrate_command, ["--help"])
    unwrapped = "".join(res.output.split())
    for name in MODEL_PRESETS:
        assert name in unwrapped
    assert "--overwrite" in res.output and "--resume" in res.output


def test_ci_runs_the_readme_commands_in_a_fresh_virtual_environment():
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m venv" in script and "mktemp -d" in script
    printed = subprocess.run(["bash", str(REPO / ".ci" / "run"), "--print-commands"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, flags=re.S | re.M)
    assert printed == [line for block in blocks[:2] for line in block.splitlines()]
    assert printed[0].startswith("pip install") and "asymrnr-calibrate" in printed[0] and printed[1] == "python -m pytest"
