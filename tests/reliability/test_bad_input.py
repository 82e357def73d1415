"""Bad input fails before any work, naming what is wrong: configs (bstar.config), what a valid
config still needs from the machine (bstar.preflight: model paths, data files, verifiers, the
storage root and its S3 credentials), and malformed dataset records (file:line and field, or
skipped and counted with `on_error: skip`).

    BSTAR_TORCH_THREADS=1 pytest tests/reliability/test_bad_input.py      # ~15 s (S3 server start included)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bstar.config import ConfigError, parse_config
from bstar.datasets import RowError, load
from bstar.preflight import PreflightError, Problem, check_run, preflight

# --- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, field, words",
    [
        ({"sampling": {"temprature": 0.7}}, "sampling.temprature", "unknown key"),
        ({"storage": {"root": "./lake", "bucket": "x"}}, "storage.bucket", "unknown key"),
        ({"data": {"test": [{"name": "arith", "splitt": "test"}]}}, "data.test.0.splitt", "unknown key"),
        ({"sampling": {"temperature": "hot"}}, "sampling.temperature", "valid number"),
        ({"sampling": {"k": 2.5}}, "sampling.k", "valid integer"),
        ({"search": {"temperatures": "0.5"}}, "search.temperatures", "valid list"),
        ({"model": {"name_or_path": None}}, "model.name_or_path", "valid string"),
        ({"storage": {"root": 5}}, "storage.root", "valid string"),
        ({"search": {"temperatures": []}}, "search.temperatures", "at least 1"),
        ({"search": {"thresholds": []}}, "search.thresholds", "at least 1"),
        ({"search": {"thresholds": {"start": 1, "stop": 0, "step": 0.1}}}, "search.thresholds", "range is empty"),
        ({"data": {"test": []}}, "data.test", "at least 1"),
        ({"eval": {"k": 8, "ks": [1, 2], "ss": [4]}}, "eval", "K >= S"),
        ({"eval": {"k": 4, "ks": [8]}}, "eval", "exceed"),
        ({"eval": {"ks": []}}, "eval.ks", "at least 1 item"),
        ({"selection": {"n_target": 0}}, "selection.n_target", "greater than 0"),
        ({"model": {"name_or_path": "./m", "gguf_file": "model.bin"}}, "model", "must name a .gguf file"),
        ({"model": {"gguf_file": "m.gguf"}}, "model", "name_or_path is 'tiny'"),
        ({"data": {"train": {"name": "gsm8k", "path": "x", "offset": -1}}}, "data.train.offset", "greater than or equal"),
    ],
)
def test_bad_config_fails_naming_the_field(raw, field, words):
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert f"  {field}: " in str(e.value) and words in str(e.value)


def test_every_bad_field_is_listed_at_once():
    with pytest.raises(ConfigError) as e:
        parse_config({"sampling": {"k": 0, "tempx": 1}, "search": {"temperatures": []}, "iterations": "x"})
    lines = [ln.split(":")[0].strip() for ln in str(e.value).splitlines()[1:]]
    assert sorted(lines) == ["iterations", "sampling.k", "sampling.tempx", "search.temperatures"]


# --- pre-flight: what the machine must provide ----------------------------------------------------


def _fields(problems: list[Problem]) -> dict[str, str]:
    return {p.field: p.message for p in problems}


def _cfg(tmp_path, **sections):
    return parse_config({"storage": {"root": str(tmp_path / "lake")}, **sections})


def test_defaults_pass_and_leave_no_trace(tmp_path):
    cfg = _cfg(tmp_path)
    assert check_run(cfg) == []
    assert os.listdir(tmp_path / "lake") == []  # the write probe is gone, and nothing else was made


def test_model_paths(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (tmp_path / "empty").mkdir()
    (ckpt / "config.json").write_text("{}")
    assert check_run(_cfg(tmp_path, model={"name_or_path": str(ckpt)})) == []
    cases = {
        str(tmp_path / "no-such-ckpt"): "does not exist",
        str(tmp_path / "empty"): "no config.json",
        str(ckpt / "config.json"): "is a file",
        "no-such-org/no-such-model-3f9a": "not in the hub cache",  # HF_HUB_OFFLINE=1 in the tests
        "./runs/ckpt/round-9": "does not exist",
    }
    for name, words in cases.items():
        problems = _fields(check_run(_cfg(tmp_path, model={"name_or_path": name})))
        assert list(problems) == ["model.name_or_path"] and words in problems["model.name_or_path"], (name, problems)
    prm = _fields(check_run(_cfg(tmp_path, reward={"kind": "answer+prm", "prm": str(tmp_path / "no-prm")})))
    assert "does not exist" in prm["reward.prm"]


def test_gguf_models_and_chat_templates(tmp_path):
    """A GGUF source must exist (package installed and shipping one, or the file present) and a
    chat template must be there when model.chat_template asks for it, all before any work."""
    (tmp_path / "gg").mkdir()
    (tmp_path / "gg" / "m.gguf").write_bytes(b"GGUF")
    assert check_run(_cfg(tmp_path, model={"name_or_path": str(tmp_path / "gg"), "gguf_file": "m.gguf"})) == []
    assert check_run(_cfg(tmp_path, model={"name_or_path": str(tmp_path / "gg" / "m.gguf")})) == []
    cases = [
        ({"name_or_path": str(tmp_path / "gg"), "gguf_file": "other.gguf"}, "model.gguf_file", "'other.gguf' not found"),
        ({"name_or_path": str(tmp_path / "nope.gguf")}, "model.name_or_path", "'nope.gguf' not found"),
        ({"name_or_path": "package:no_such_pkg_3f9a"}, "model.name_or_path", "'no_such_pkg_3f9a' is not installed"),
        ({"name_or_path": "tiny", "chat_template": True}, "model.chat_template", "tiny model has no chat template"),
    ]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "tokenizer_config.json").write_text("{}")
    cases.append(({"name_or_path": str(ckpt), "chat_template": True}, "model.chat_template", "has no chat template"))
    for model, field, words in cases:
        problems = _fields(check_run(_cfg(tmp_path, model=model)))
        assert list(problems) == [field] and words in problems[field], (model, problems)
    (ckpt / "chat_template.jinja").write_text("{{ messages }}")
    assert check_run(_cfg(tmp_path, model={"name_or_path": str(ckpt), "chat_template": True})) == []


def test_data_files_loaders_and_verifiers(tmp_path):
    good = tmp_path / "gsm8k.jsonl"
    good.write_text(json.dumps({"question": "1+1?", "answer": "so #### 2"}) + "\n")
    cfg = _cfg(
        tmp_path,
        data={
            "train": {"name": "gsm8k", "path": str(tmp_path / "missing.jsonl")},
            "test": [
                {"name": "gsm8k", "path": str(good)},
                {"name": "mine", "loader": "no_such_pkg.data:rows"},
                {"name": "gsmk8"},
                {"name": "gsm8k", "path": str(good), "verifier": "gsm8kk"},
            ],
        },
        reward={"verifier": "no_such_pkg.grade:verify"},
    )
    problems = _fields(check_run(cfg))
    assert sorted(problems) == [
        "data.test.1.loader", "data.test.2.name", "data.test.3.verifier", "data.train.path", "reward.verifier",
    ]
    assert "does not exist" in problems["data.train.path"] and "missing.jsonl" in problems["data.train.path"]
    assert "no_such_pkg" in problems["data.test.1.loader"]
    assert "unknown dataset 'gsmk8'" in problems["data.test.2.name"]
    assert "unknown verifier 'gsm8kk'" in problems["data.test.3.verifier"]


def test_code_runs_fail_up_front_without_a_sandbox(tmp_path, monkeypatch):
    from bstar.verifiers import sandbox as sb

    real_which = sb.shutil.which
    monkeypatch.setattr(sb.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else real_which(name, *a, **k))
    monkeypatch.delenv("BSTAR_ALLOW_UNSANDBOXED", raising=False)
    sb._probe.cache_clear()
    try:
        problems = _fields(check_run(_cfg(tmp_path, data={"train": {"name": "apps"}})))
        assert list(problems) == ["data.train.verifier"] and "bubblewrap" in problems["data.train.verifier"]
        monkeypatch.setenv("BSTAR_ALLOW_UNSANDBOXED", "1")
        assert check_run(_cfg(tmp_path, data={"train": {"name": "apps"}})) == []
    finally:
        sb._probe.cache_clear()


def test_unwritable_local_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = parse_config({"storage": {"root": str(blocker / "lake")}})
    with pytest.raises(PreflightError) as e:
        preflight(cfg)
    assert [p.field for p in e.value.problems] == ["storage.root"] and "cannot write" in str(e.value)
    assert isinstance(e.value, ConfigError)  # the CLI reports it like any config error


@pytest.fixture(scope="module")
def s3():
    from tests.s3server import S3Server, WeedNotFound, find_weed

    try:
        find_weed()
    except WeedNotFound as e:
        pytest.skip(str(e))
    server = S3Server(bucket="bstar-preflight").start()
    try:
        yield server
    finally:
        server.stop()


def _s3_cfg(s3, **overrides):
    storage = {"root": f"s3://{s3.bucket}/lake", "endpoint_url": s3.endpoint, "key": s3.key, "secret": s3.secret,
               "region": "us-east-1", **overrides}
    return parse_config({"storage": storage})


def test_s3_root_with_wrong_credentials_fails_before_any_work(s3, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    assert check_run(_s3_cfg(s3)) == []
    wrong_secret = "wrong-" + s3.secret[::-1]
    for bad in ({"secret": wrong_secret}, {"key": "AKNOSUCHKEY0000"}):
        with pytest.raises(PreflightError) as e:
            preflight(_s3_cfg(s3, **bad))
        msg = str(e.value)
        assert [p.field for p in e.value.problems] == ["storage.root"] and "access denied" in msg, msg
        assert wrong_secret not in msg and s3.secret not in msg
    problems = _fields(check_run(_s3_cfg(s3, root="s3://no-such-bucket-x9/lake")))
    assert list(problems) == ["storage.root"]
    import s3fs

    fs = s3fs.S3FileSystem(key=s3.key, secret=s3.secret, client_kwargs={"endpoint_url": s3.endpoint, "region_name": "us-east-1"})
    assert [p for p in fs.ls(f"{s3.bucket}/lake", refresh=True) if ".bstar-preflight-" in p] == []


# --- datasets ---------------------------------------------------------------------------------------


def _jsonl(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode("utf-8"))
            f.write(b"\n")
    return path


def _gsm(q: str, a: str = "so #### 2", **extra) -> dict:
    return {"question": q, "answer": a, **extra}


BAD_RECORDS = [  # (name, record, field named in the error, words)
    ("missing field", {"question": "what?"}, "answer", "missing"),
    ("empty answer", _gsm("1+1?", "   "), "answer", "empty"),
    ("empty question", _gsm(""), "question", "empty"),
    ("non-UTF-8 bytes", b'{"question": "caf\xe9 \xff?", "answer": "#### 2"}', None, "not UTF-8"),
    ("not JSON", b'{"question": "1+1?", "answer": ', None, "not valid JSON"),
    ("duplicate id, other content", _gsm("1+2?", "#### 3", id="dup"), "query_id", "duplicate id 'dup'"),
    ("10 MB question", _gsm("x" * 10_000_000), "prompt", "over the limit"),
]


@pytest.mark.parametrize("name,record,field,words", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_raises_with_file_line_and_field(tmp_path, name, record, field, words):
    path = _jsonl(tmp_path / "data.jsonl", [_gsm("1+1?", id="dup"), _gsm("2+2?", "#### 4"), record])
    with pytest.raises(RowError) as e:
        load({"name": "gsm8k", "path": str(path)})
    assert str(e.value).startswith(f"{path}:3: ") and words in str(e.value)
    assert e.value.field == field


def test_bad_records_are_skipped_and_counted_when_configured(tmp_path):
    records = [_gsm("1+1?", id="dup"), _gsm("1+1?", id="dup")] + [r for _, r, _, _ in BAD_RECORDS] + [_gsm("3+3?", "#### 6")]
    path = _jsonl(tmp_path / "data.jsonl", records)
    rows = load({"name": "gsm8k", "path": str(path), "on_error": "skip"})
    assert [r["prompt"] for r in rows] == ["1+1?", "3+3?"]
    assert (rows.skipped, rows.duplicates) == (len(BAD_RECORDS), 1)
    assert [e.split(": ")[0] for e in rows.report()["errors"]] == [f"{path}:{i}" for i in range(3, 3 + len(BAD_RECORDS))]


def test_prompt_limit_is_configurable(tmp_path):
    path = _jsonl(tmp_path / "data.jsonl", [_gsm("y" * 300)])
    assert len(load({"name": "gsm8k", "path": str(path)})) == 1
    with pytest.raises(RowError, match="300 characters, over the limit of 100"):
        load({"name": "gsm8k", "path": str(path), "options": {"max_prompt_chars": 100}})


def _apps(pid: int, io) -> dict:
    return {"problem_id": pid, "question": "add two numbers", "input_output": io, "solutions": "[]"}


@pytest.mark.parametrize(
    "io, words",
    [
        ('{"inputs": ["1 2"], "outputs": [', "unusable tests JSON"),
        ('{"inputs": ["1 2"], "outputs": []}', "1 inputs but 0 outputs"),
        ('{"inputs": [], "outputs": []}', "no tests"),
        ('["1 2", "3"]', "must be a JSON object"),
        ("", "no tests"),
    ],
)
def test_broken_apps_tests_json(tmp_path, io, words):
    path = _jsonl(tmp_path / "apps.jsonl", [_apps(1, '{"inputs": ["1 2\\n"], "outputs": ["3\\n"]}'), _apps(2, io)])
    with pytest.raises(RowError) as e:
        load({"name": "apps", "path": str(path)})
    assert str(e.value).startswith(f"{path}:2: field 'input_output'") and words in str(e.value)
    rows = load({"name": "apps", "path": str(path), "on_error": "skip"})
    assert [r["query_id"] for r in rows] == ["apps-1"] and rows.skipped == 1


def test_a_bad_dataset_stops_the_run_at_its_first_stage(tmp_path):
    """record_run's queries_frame is the first thing a run does: the row error surfaces there."""
    from bstar.tasks.data import queries_frame

    path = _jsonl(tmp_path / "data.jsonl", [_gsm("1+1?"), _gsm("2+2?", "")])
    cfg = _cfg(tmp_path, data={"train": {"name": "gsm8k", "path": str(path)}})
    with pytest.raises(RowError, match=r"data\.jsonl:2: field 'answer': empty"):
        queries_frame(cfg)
    skipping = _cfg(tmp_path, data={"train": {"name": "gsm8k", "path": str(path), "on_error": "skip"}})
    assert queries_frame(skipping).filter(split="train")["prompt"].to_list() == ["1+1?"]
