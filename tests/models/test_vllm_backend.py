"""The vLLM backend with real worker processes around a stand-in engine (tests/models/fake_vllm.py,
loaded through the same `engine_module` seam as vLLM): requests and outputs, the inherited device
mask, one set of engines reused across calls, one engine per device, and workers that die.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/models/test_vllm_backend.py
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from bstar.models.vllm_backend import VLLMSampler, VLLMWorkerError, device_groups, visible_devices

FAKE = "tests.models.fake_vllm"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def char_tokenizer():
    from bstar.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture
def make(tmp_path, monkeypatch, char_tokenizer):
    """VLLMSampler(...) on the fake engine, under a given CUDA_VISIBLE_DEVICES; closes them all."""
    made = []

    # worker logs kept after a failure land in the test's own directory
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def make(mask="0", model="/models/x", **kw):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
        s = VLLMSampler(model, engine_module=FAKE, fake_dir=str(tmp_path), tokenizer=char_tokenizer, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def engines(tmp_path) -> list[dict]:
    path = tmp_path / "engines.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead to the device: it holds no memory, only a process-table entry
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def fields(text: str) -> dict:
    ids, seed, j, temp, top_p, max_tokens, stop, devices, pid = text.split("|")
    return dict(ids=ids, seed=int(seed), j=int(j), temperature=float(temp), top_p=float(top_p),
                max_tokens=int(max_tokens), stop=stop, devices=devices, pid=int(pid))


def test_device_mask_parsing():
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == (["4", "5", "6", "7"],
                                                                    "CUDA_VISIBLE_DEVICES='4,5,6,7' leaves 4")
    uuids = "GPU-8f6c2a1e-1b2c-4d5e-9f00-aa11bb22cc33, GPU-0d9e8f7a-6b5c-4d3e-8f21-ffeeddccbbaa"
    assert visible_devices({"CUDA_VISIBLE_DEVICES": uuids})[0] == [u.strip() for u in uuids.split(",")]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "MIG-3f2e/1/0"})[0] == ["MIG-3f2e/1/0"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0,1,-1,2"})[0] == ["0", "1"]  # CUDA stops at an invalid one
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""})[0] == []
    assert visible_devices({}, count=3) == (["0", "1", "2"],
                                            "CUDA_VISIBLE_DEVICES is unset and 3 device(s) are present")
    assert device_groups(2, 2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == ["4,5", "6,7"]
    assert device_groups(3, 1, {}, count=8) == ["0", "1", "2"]
    assert device_groups(2, 1, {"CUDA_VISIBLE_DEVICES": uuids}) == [u.strip() for u in uuids.split(",")]


def test_too_few_devices_fails_before_anything_starts(make, tmp_path):
    with pytest.raises(ValueError) as e:
        make("4,5,6", data_parallel_size=2, tensor_parallel_size=2)
    assert str(e.value) == ("sampling.data_parallel_size x sampling.tensor_parallel_size = 2 x 2 = 4 devices, "
                            "but CUDA_VISIBLE_DEVICES='4,5,6' leaves 3")
    assert engines(tmp_path) == []


def test_requests_outputs_and_one_set_of_workers_for_every_call(make, tmp_path):
    from bstar.models.loading import encode_prompts

    s = make("4,5,6,7", data_parallel_size=2, tensor_parallel_size=2, gpu_memory_utilization=0.5)
    assert s.workers == []  # engines start on first use
    prompts = ["a", "b", "c"]
    out = s.sample(prompts, k=3, temperature=0.8, top_p=0.9, max_new_tokens=16, seeds=[1, 2, 3], base_seed=5,
                   stop=["\n"], first_sample_idx=6)
    first = s.workers
    # worker r on devices r*tp .. (r+1)*tp-1 of the inherited mask, as the worker itself saw them
    assert [(w.rank, w.devices) for w in first] == [(0, "4,5"), (1, "6,7")]
    again = s.sample(prompts, k=3, temperature=0.3, top_p=0.9, max_new_tokens=16, seeds=[1, 2, 3], base_seed=5)
    g = s.greedy(["a"], max_new_tokens=4)
    assert s.workers == first  # the same processes served every call
    started = engines(tmp_path)
    assert sorted((e["devices"], e["pid"]) for e in started) == sorted((w.devices, w.pid) for w in first)
    assert started[0]["model"] == "/models/x"
    assert started[0]["kwargs"] == {"tensor_parallel_size": 2, "dtype": "auto", "gpu_memory_utilization": 0.5,
                                    "seed": 0, "enforce_eager": False}

    rows = [[fields(c.text) for c in cs] for cs in out]
    ids = encode_prompts(s.tokenizer, prompts)  # token ids, BOS once, as the trainer encodes them
    assert [r[0]["ids"] for r in rows] == [",".join(map(str, i)) for i in ids]
    # contiguous slices: prompts 0-1 on the first engine, prompt 2 on the second
    assert [(r[0]["devices"], r[0]["pid"]) for r in rows] == [("4,5", first[0].pid)] * 2 + [("6,7", first[1].pid)]
    assert {(f["temperature"], f["top_p"], f["max_tokens"], f["stop"]) for r in rows for f in r} == {
        (0.8, 0.9, 16, "\n")}
    assert [[c.sample_idx for c in cs] for cs in out] == [[6, 7, 8]] * 3
    assert [f["j"] for f in rows[0]] == [0, 1, 2]  # sorted back into vLLM's output order
    assert [c.finish_reason for c in out[0]] == ["length", "stop", "stop"]
    assert [c.n_tokens for c in out[0]] == [1, 2, 3]
    assert len({r[0]["seed"] for r in rows}) == 3  # per-prompt seeds
    assert fields(again[0][0].text)["temperature"] == 0.3
    same = s.sample(prompts, k=3, temperature=0.8, top_p=0.9, max_new_tokens=16, seeds=[1, 2, 3], base_seed=5,
                    stop=["\n"], first_sample_idx=6)
    assert [[c.text for c in cs] for cs in same] == [[c.text for c in cs] for cs in out]  # a rerun: the same requests
    gf = fields(g[0].text)
    assert (gf["temperature"], gf["top_p"], gf["max_tokens"], g[0].sample_idx) == (0.0, 1.0, 4, 0)
    assert s.sample([], k=2) == []

    pids = [w.pid for w in first]
    s.close()
    assert s.workers == [] and not any(alive(p) for p in pids)
    with pytest.raises(RuntimeError, match="closed"):
        s.sample(["a"])


def test_two_samplers_on_the_same_devices_take_turns(make, tmp_path):
    """Math-Shepherd annotation opens the policy and the completer together: their engines must
    never hold the same device at once (the fake engine fails like an out-of-memory GPU if they do)."""
    policy = make("2,3", model="/ckpt/policy", data_parallel_size=2)
    completer = make("2,3", model="/ckpt/completer", data_parallel_size=2)
    policy.sample(["a", "b"], k=2)
    policy_pids = [w.pid for w in policy.workers]
    completer.sample(["a", "b"], k=4)
    assert policy.workers == [] and not any(alive(p) for p in policy_pids)
    policy.sample(["a"], k=1)  # the policy starts again, the completer makes way
    assert completer.workers == [] and len(policy.workers) == 2
    starts = engines(tmp_path)
    turns = [(starts[i]["model"], {starts[i]["devices"], starts[i + 1]["devices"]}) for i in range(0, len(starts), 2)]
    assert turns == [("/ckpt/policy", {"2", "3"}), ("/ckpt/completer", {"2", "3"}), ("/ckpt/policy", {"2", "3"})]


def test_engine_start_failure_is_reported_and_the_other_worker_stopped(make):
    s = make("0,1", data_parallel_size=2, fake_fail={"devices": "1", "at": "start", "how": "raise"})
    t0 = time.monotonic()
    with pytest.raises(VLLMWorkerError) as e:
        s.sample(["a", "b"], k=1)
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert msg.splitlines()[0].startswith("vLLM worker 1 of x (pid ")
    assert ("CUDA_VISIBLE_DEVICES=1) failed while starting its engine; every worker is stopped: RuntimeError: fake "
            "engine on devices 1: CUDA out of memory. Tried to allocate 20.00 GiB") in msg.splitlines()[0]
    assert "Traceback" in msg
    assert s.workers == []


def test_a_worker_killed_mid_request_fails_the_call_within_a_bounded_wait(make, tmp_path):
    s = make("6,7", data_parallel_size=2, fake_fail={"devices": "7", "at": "generate", "how": "kill"})
    t0 = time.monotonic()
    with pytest.raises(VLLMWorkerError) as e:
        s.sample(["a", "b", "c", "d"], k=2)
    waited = time.monotonic() - t0
    started = {r["devices"]: r["pid"] for r in engines(tmp_path)}
    head, *_, last = str(e.value).splitlines()
    assert head.startswith(f"vLLM worker 1 of x (pid {started['7']}, CUDA_VISIBLE_DEVICES=7) was killed by SIGKILL "
                           "(the kernel's OOM killer sends SIGKILL: see dmesg) while generating; every worker is "
                           "stopped; the end of its output (")
    log_path = Path(head.split("output (")[1].rstrip("):"))
    assert log_path.read_text().strip().splitlines()[-1] == last  # kept for a look after the failure
    # the dead worker's own last words
    assert last == "fake engine on devices 7: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert waited < 10, waited
    assert not alive(started["6"])  # its healthy sibling gave its device back too
    assert s.workers == []


def test_a_worker_that_died_between_calls_fails_the_next_one(make):
    s = make("0,1", data_parallel_size=2)
    s.sample(["a", "b"], k=1)
    victim = s.workers[0].pid
    os.kill(victim, signal.SIGKILL)  # as the OOM killer would, while the stage writes its parts
    expected = rf"^vLLM worker 0 of x \(pid {victim}, CUDA_VISIBLE_DEVICES=0\) was killed by SIGKILL"
    with pytest.raises(VLLMWorkerError, match=expected):
        s.sample(["a", "b"], k=1)
    assert s.workers == []
    assert len(s.sample(["a", "b"], k=1)) == 2  # a later call starts fresh engines


def test_a_killed_worker_takes_its_engine_processes_with_it(make, tmp_path):
    """vLLM runs its engine core in a child process: when the worker is SIGKILLed that child is left
    behind holding the device, unless the worker's whole process group is ended."""
    s = make("0", fake_child={"gib": 0})
    s.sample(["a"], k=1)
    worker, child = s.workers[0].pid, engines(tmp_path)[0]["child"]["pid"]
    assert alive(child) and child != worker
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(VLLMWorkerError, match="was killed by SIGKILL"):
        s.sample(["a"], k=1)
    assert not alive(child)
    s.sample(["a"], k=1)  # a clean stop ends the new engine's child too
    child = engines(tmp_path)[1]["child"]["pid"]
    s.close()
    assert not alive(child)


@pytest.mark.gpu
def test_workers_hand_the_gpu_back(make, tmp_path):
    """On a real GPU: a worker under a GPU-UUID mask lands on that device, and its engine's device
    memory is free again after close() and after the worker is SIGKILLed."""
    import shutil

    if not shutil.which("nvidia-smi"):  # before importing torch: a skip here should cost nothing
        pytest.skip("needs a CUDA device")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    uuid = next(line.split("UUID: ")[1].rstrip(")") for line in subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout.splitlines() if "UUID: GPU-" in line)

    def free_gib():
        torch.cuda.synchronize()
        return torch.cuda.mem_get_info()[0] / 2**30

    def settles(target, within=30.0):
        deadline = time.monotonic() + within
        while free_gib() < target and time.monotonic() < deadline:
            time.sleep(0.2)
        return free_gib()

    base = free_gib()
    s = make(uuid, fake_child={"gib": 8})
    s.sample(["a"], k=1)
    held = engines(tmp_path)[0]["child"]
    assert (s.workers[0].devices, held["devices"], held["cuda_count"]) == (uuid, uuid, 1)
    assert uuid.endswith(held["uuid"][-12:])
    assert base - free_gib() >= 7.5
    t0 = time.monotonic()
    s.close()
    assert settles(base - 0.5) >= base - 0.5, "close() left device memory taken"
    print(f"close(): device memory back in {time.monotonic() - t0:.2f} s")

    s = make(uuid, fake_child={"gib": 8})
    s.sample(["a"], k=1)
    assert base - free_gib() >= 7.5
    os.kill(s.workers[0].pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(VLLMWorkerError, match="killed by SIGKILL"):
        s.sample(["a"], k=1)
    assert settles(base - 0.5) >= base - 0.5, "a killed worker's engine kept its device memory"
    print(f"killed worker: failure raised and device memory back in {time.monotonic() - t0:.2f} s")


def test_workers_die_with_a_killed_parent(tmp_path):
    """A SIGKILLed stage (the fault tests, a scheduler) must not leave an engine holding a device."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from bstar.models.vllm_backend import VLLMSampler
        from tests.models.fake_vllm import ByteTokenizer
        s = VLLMSampler("/models/x", data_parallel_size=2, engine_module="{FAKE}", fake_dir=sys.argv[1],
                        tokenizer=ByteTokenizer())
        s.sample(["a", "b"], k=1)
        print(" ".join(str(w.pid) for w in s.workers), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1", PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_workers_under_another_interpreter(make, tmp_path, monkeypatch):
    """vLLM may live in an environment of its own (BSTAR_VLLM_PYTHON): the workers need only the
    standard library, the engine module and this source tree."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not base.exists() or sys.prefix == sys.base_prefix:
        pytest.skip("needs a virtual environment and the interpreter it was made from")
    monkeypatch.setenv("BSTAR_VLLM_PYTHON", str(base))
    s = make("0")
    assert s.python == str(base)
    assert fields(s.sample(["a"], k=1)[0][0].text)["devices"] == "0"
    assert engines(tmp_path)[0]["python"] == str(base)


def test_missing_engine_module_is_an_import_error_at_once(monkeypatch, tmp_path):
    from bstar.models.sampler_api import get_sampler

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ImportError, match="vllm"):
        get_sampler("vllm", "/models/x", engine_module="no_such_vllm_module")
    monkeypatch.setenv("BSTAR_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(ImportError, match="BSTAR_VLLM_PYTHON"):
        VLLMSampler("/models/x", engine_module=FAKE)


def test_the_backends_do_not_import_each_other():
    """sampler_api is the one module both backends import; the vLLM side imports no torch."""
    checks = {"bstar.models.vllm_backend": {"bstar.models.sampling", "torch", "transformers", "vllm"},
              "bstar.models.sampling": {"bstar.models.vllm_backend", "vllm"}}
    for module, absent in checks.items():
        code = f"import sys, {module}; print(sorted({absent!r} & set(sys.modules)))"
        out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
        assert out.stdout.strip() == "[]", (module, out.stdout)
