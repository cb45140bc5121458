"""The dtype and thread picks of `auto`, with the hardware probes mocked."""
import os
import subprocess
import sys

import pytest
import torch

from poegen import hardware


@pytest.fixture(autouse=True)
def fresh_pick():
    hardware._native.cache_clear()
    hardware._warned.clear()
    yield
    hardware._native.cache_clear()
    hardware._warned.clear()


def _cpu(monkeypatch, avx512_bf16: bool, amx: bool, capability: str):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])
def test_auto_never_picks_bf16_without_native_support(monkeypatch, capability):
    _cpu(monkeypatch, avx512_bf16=False, amx=False, capability=capability)
    dtype, why = hardware.pick_dtype("auto", "cpu")
    assert dtype == torch.float32 and "emulated" in why


@pytest.mark.parametrize("avx512_bf16,amx", [(True, False), (False, True), (True, True)])
def test_auto_picks_bf16_where_native(monkeypatch, avx512_bf16, amx):
    _cpu(monkeypatch, avx512_bf16, amx, "AVX512")
    dtype, why = hardware.pick_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and ("AMX" in why) == amx and ("AVX512-BF16" in why) == avx512_bf16


def test_explicit_dtype_overrides_and_bad_name_is_refused(monkeypatch, caplog):
    _cpu(monkeypatch, avx512_bf16=False, amx=False, capability="AVX2")
    with caplog.at_level("WARNING", logger="poegen.hardware"):
        assert hardware.pick_dtype("bfloat16", "cpu")[0] == torch.bfloat16
        hardware.pick_dtype("bfloat16", "cpu")
    warned = [r for r in caplog.records if "many times slower" in r.getMessage()]
    assert len(warned) == 1  # asked for where it is emulated: said once
    _cpu(monkeypatch, avx512_bf16=True, amx=False, capability="AVX512")
    hardware._native.cache_clear()
    hardware._warned.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="poegen.hardware"):
        hardware.pick_dtype("bfloat16", "cpu")
    assert not caplog.records
    assert hardware.pick_dtype("float32", "cpu")[0] == torch.float32
    with pytest.raises(ValueError, match="dtype 'fp16': expected one of auto, float32, bfloat16"):
        hardware.pick_dtype("fp16")


def test_shapes_prior_computes_in_the_picked_dtype(monkeypatch):
    """The prior's forward runs under bf16 autocast exactly when the pick says bf16."""
    from poegen.experts.shapes.model import load_prior

    prior = load_prior()
    seen = []
    hook = prior.net.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.zeros(1, 3, 32, 32)
    for native, want in ((False, torch.float32), (True, torch.bfloat16)):
        hardware._native.cache_clear()
        _cpu(monkeypatch, avx512_bf16=native, amx=False, capability="AVX512")
        out = prior.null().denoise(x, torch.tensor(1.0))
        assert seen[-1] == want and out.dtype == torch.float32
    assert prior.null("float32").denoise(x, torch.tensor(1.0)).dtype == torch.float32 and seen[-1] == torch.float32
    hook.remove()


def _threads(monkeypatch, cores, busy, quota=None, local=None):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    if local:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(hardware, "cgroup_cpus", lambda: quota)
    monkeypatch.setattr(hardware, "busy_elsewhere", lambda: busy)
    return hardware.pick_threads()


@pytest.mark.parametrize("cores,busy,quota,local,want", [
    (2, 0.0, None, None, 2),     # idle: every core
    (2, 1.0, None, None, 1),     # one busy process: never more threads than free cores
    (2, 0.9, None, None, 1),
    (2, 0.3, None, None, 2),     # a mostly idle neighbour is not a busy core
    (2, 5.0, None, None, 1),     # at least one
    (16, 3.0, None, None, 13),
    (16, 0.0, 4.0, None, 4),     # a cgroup quota caps it
    (16, 0.0, 2.5, None, 2),
    (8, 0.0, None, 2, 4),        # two accelerate processes on one machine share the cores
    (2, None, None, None, 2),    # no /proc: the affinity alone
])
def test_threads_follow_free_cores(monkeypatch, cores, busy, quota, local, want):
    assert _threads(monkeypatch, cores, busy, quota, local).threads == want


def test_threads_respect_the_environment_and_the_flag(monkeypatch):
    _threads(monkeypatch, 8, 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.pick_threads().threads == 3 and hardware.pick_threads(5).threads == 5
    with pytest.raises(ValueError, match="threads 0"):
        hardware.pick_threads(0)


def test_a_busy_process_is_seen():
    """A real spinning process counts as about one busy thread (the sampling of /proc/stat, unmocked)."""
    idle = hardware.busy_elsewhere(samples=20)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        busy = hardware.busy_elsewhere(samples=20)
    finally:
        spin.kill()
    assert busy is not None and busy >= idle + 0.5


def test_cli_help_loads_no_torch():
    code = ("import sys\nfrom poegen import cli\ntry:\n    cli.main(['generate', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--dtype" in out and "--threads" in out and out.split()[-1] == "False"


def test_env_reports_the_picks():
    out = subprocess.run([sys.executable, "-m", "poegen.cli", "env"], capture_output=True, text=True, check=True).stdout
    assert "torch " in out and "dtype auto on cpu: " in out and "threads auto: " in out and "prior.safetensors" in out



# ---- the API's threads: picked as the CLI picks them, unless the caller chose them --------------------------

API = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
{before}
import poegen
from poegen import hardware
{mocks}
from poegen.experts.analytic import Gaussian
poegen.sample(poegen.Product([Gaussian(torch.zeros(2), torch.eye(2))]), num_particles=2, num_steps=2)
poegen.build_product(poegen.from_prompt("a red ball"))
print("threads", torch.get_num_threads())
"""
# 6 cores, 2 busy elsewhere: the automatic pick is 4 (never torch's own default, the machine's physical cores)
BUSY = ("hardware.os.sched_getaffinity = lambda pid: set(range(6)); hardware.cgroup_cpus = lambda: None; "
        "hardware.busy_elsewhere = lambda: 2.0")


def _api(before: str = "", mocks: str = BUSY, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-c", API.format(before=before, mocks=mocks)], capture_output=True,
                         text=True, check=True, env={**clean, **env}).stdout
    return int(out.split("threads ")[-1]), out


def test_the_api_picks_threads_as_the_cli_does():
    """Untouched, torch's default count gives way to configure_threads' pick (the free cores), and the pick is
    logged with its reasons."""
    threads, log = _api()
    assert threads == 4
    assert "poegen.hardware: intra-op threads: 4 (6 cores in this process's affinity, 2.0 busy with other " \
           "processes)" in log


def test_the_callers_thread_count_wins():
    """torch.set_num_threads before poegen is imported is kept (and said to be kept), whatever the load."""
    threads, log = _api("torch.set_num_threads(torch.get_num_interop_threads() + 1)")
    assert threads == torch.get_num_interop_threads() + 1 != 4
    assert "left as they are (set by the caller" in log and "intra-op threads: 4" not in log


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_the_environments_thread_count_wins(name):
    threads, log = _api(**{name: "1"})
    assert threads == 1 and f"the environment's {name}=1" in log


@pytest.fixture
def state(monkeypatch):
    """A process where poegen has not touched the threads yet, torch's default being 2, on 4 mocked cores."""
    before = torch.get_num_threads()
    monkeypatch.setattr(hardware, "_state", hardware._Threads())
    monkeypatch.setattr(hardware, "torch_default_threads", lambda: 2)
    busy = {"now": 0.0, "looks": 0}

    def looked():
        busy["looks"] += 1
        return busy["now"]
    _threads(monkeypatch, 4, 0.0)
    monkeypatch.setattr(hardware, "busy_elsewhere", looked)
    torch.set_num_threads(2)
    yield busy
    torch.set_num_threads(before)


def test_the_pick_is_reused_for_a_while_then_follows_the_load(state, monkeypatch, caplog):
    with caplog.at_level("DEBUG", logger="poegen.hardware"):
        assert hardware.configure_threads().threads == 4 and torch.get_num_threads() == 4
        state["now"] = 2.0
        assert hardware.configure_threads().threads == 4 and state["looks"] == 1  # within REPICK_AFTER_S: kept
        monkeypatch.setattr(hardware, "REPICK_AFTER_S", 0.0)
        assert hardware.configure_threads().threads == 2 and torch.get_num_threads() == 2 and state["looks"] == 2
    said = [r.getMessage() for r in caplog.records]
    assert said == ["intra-op threads: 4 (4 cores in this process's affinity)",
                    "intra-op threads: 2 (4 cores in this process's affinity, 2.0 busy with other processes)"]


def test_a_count_the_caller_sets_later_is_kept(state, monkeypatch, caplog):
    monkeypatch.setattr(hardware, "REPICK_AFTER_S", 0.0)
    hardware.configure_threads()
    torch.set_num_threads(3)
    with caplog.at_level("INFO", logger="poegen.hardware"):
        assert hardware.configure_threads().threads == 3 and hardware.configure_threads().threads == 3
    assert torch.get_num_threads() == 3 and state["looks"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "intra-op threads: 3 left as they are (changed by the caller since poegen set 4)"]


def test_threads_asked_for_are_never_repicked(state, monkeypatch):
    """--threads (configure_threads(n)) pins the count: the API's later automatic calls keep it."""
    monkeypatch.setattr(hardware, "REPICK_AFTER_S", 0.0)
    assert hardware.configure_threads(1).threads == 1
    state["now"] = 0.0
    assert hardware.configure_threads().threads == 1 and torch.get_num_threads() == 1 and state["looks"] == 0


def test_torch_default_threads_is_what_a_fresh_torch_starts_with():
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = ("import torch; n = torch.get_num_threads(); from poegen import hardware; "
            "print(n, hardware.torch_default_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean).stdout
    assert out.split()[0] == out.split()[1]


def test_chunked_forward_matches_the_whole_batch(monkeypatch):
    """The shapes prior and the video prior computed in row chunks give what one forward gives (to float noise),
    and a chunk size does not change the rows' order."""
    import torch

    from poegen import hardware
    from poegen.experts.shapes.model import forward, load_prior
    from poegen.experts.shapes.video import load_video_prior

    assert hardware.in_chunks(lambda a, b: a * 10 + b, 3, torch.arange(7), torch.arange(7)).tolist() == \
        [11 * k for k in range(7)]
    net = load_prior().net
    g = torch.Generator().manual_seed(0)
    n = 70
    x, sigma = torch.randn(n, 3, 32, 32, generator=g), torch.rand(n, generator=g) * 3 + 0.1
    ids, pos = torch.zeros(n, 3, dtype=torch.long), torch.zeros(n, 1, 32, 32)
    clips = torch.randn(5, 3, 6, 32, 32, generator=g)
    temporal = load_video_prior()
    with torch.no_grad():
        monkeypatch.setattr(hardware, "CPU_ROWS", 1000)
        whole = forward(net, "float32", x, sigma, ids, pos)
        whole_clip = temporal.correct(clips, clips.flip(1), sigma[:5])
        monkeypatch.setattr(hardware, "CPU_ROWS", 16)
        chunked = forward(net, "float32", x, sigma, ids, pos)
        chunked_clip = temporal.correct(clips, clips.flip(1), sigma[:5])  # two clips (12 frames) a chunk
    assert torch.allclose(whole, chunked, atol=1e-4)
    assert torch.allclose(whole_clip, chunked_clip, atol=1e-4)
    assert not torch.allclose(whole[:35], whole[35:], atol=1e-2)  # the rows differ, so order is tested
