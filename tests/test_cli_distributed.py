"""Scale-out on the command line and in the config (issue 15, item 5): the ``distributed``
section's keys and exact messages, ``--redis-url``/``--quota-tree`` and ``--ray``/
``--workers``/``--per-worker`` with their precedence and usage errors, and a quota in a real
``redis-server`` shared by separate ``xzatoma`` processes.

A real HTTP server on 127.0.0.1 stands in for the model; the processes that share a quota are
real subprocesses of ``python -m xzatoma.cli``, each test on a quota tree of its own. Ray is
not started here: ``RayExecutor`` is replaced by a stand-in that reports the arguments the
command line built it with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _http_server import ScriptedHTTPServer
from _redis_server import RedisServer
from test_cli import chat, child_env, cli, endpoint, free_port, one_error_line, tasks_file

import xzatoma._ray_executor
from xzatoma import ConfigError, QuotaLimits, RedisQuota
from xzatoma.config import DistributedSettings, XzatomaConfig, apply_overrides, load_config

CLI = [sys.executable, "-m", "xzatoma.cli"]


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as srv:
        yield srv


@pytest.fixture
def tree(request: pytest.FixtureRequest) -> str:
    """A quota tree of this test's own in the session's Redis."""
    return f"test-cli-distributed:{request.node.name}"


def distributed(**values: object) -> dict[str, object]:
    return {"distributed": values}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xzatoma.yaml"
    path.write_text(text)
    return path


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # bound, then released: nothing listens


# -- the config section ---------------------------------------------------------------------


def test_the_defaults() -> None:
    config = XzatomaConfig.from_dict({})
    assert config.distributed == DistributedSettings(
        ray=False,
        ray_address=None,
        workers=2,
        per_worker=8,
        file_sd=None,
        redis_url=None,
        tree="xzatoma",
    )
    assert config.build_quota() == config.quota_limits()


INVALID = [
    ({"workers": 0}, "distributed.workers must be at least 1"),
    ({"workers": -2}, "distributed.workers must be at least 1"),
    ({"per_worker": 0}, "distributed.per_worker must be at least 1"),
    ({"ray_address": ""}, "distributed.ray_address must name a Ray cluster (auto, local, "
     "HOST:PORT or ray://HOST:PORT) or be null, got ''"),
    ({"ray_address": "  "}, "distributed.ray_address must name a Ray cluster (auto, local, "
     "HOST:PORT or ray://HOST:PORT) or be null, got '  '"),
    ({"redis_url": "http://127.0.0.1:6379"},
     "distributed.redis_url must start with redis://, rediss:// or unix://"),
    ({"redis_url": "127.0.0.1:6379"},
     "distributed.redis_url must start with redis://, rediss:// or unix://"),
    ({"redis_url": "redis://127.0.0.1:99999/0"},
     "distributed.redis_url has port 99999, outside 1..65535"),
    ({"redis_url": "redis://127.0.0.1:0/0"}, "distributed.redis_url has port 0, outside 1..65535"),
    ({"redis_url": "redis://127.0.0.1:six/0"},
     "distributed.redis_url has a port that is not a number; write it in digits 1..65535"),
    ({"redis_url": "redis://127.0.0.1:6379/cache"},
     "distributed.redis_url has the path '/cache', which is not a database number "
     "(e.g. redis://127.0.0.1:6379/0)"),
    ({"redis_url": "redis://127.0.0.1 :6379/0"},
     "distributed.redis_url has a space or control character at position 17; a URL holds "
     "neither (percent-encode it, e.g. %20)"),
    ({"redis_url": "unix://"},
     "distributed.redis_url names no socket; write unix:///path/to/redis.sock"),
    ({"tree": ""}, "distributed.tree must name the quota's tree in Redis, got ''"),
    ({"tree": " \t"}, "distributed.tree must name the quota's tree in Redis, got ' \\t'"),
    ({"workerz": 3}, "unknown key 'distributed.workerz' (did you mean 'workers'?); allowed "
     "here: ray, ray_address, workers, per_worker, file_sd, redis_url, tree"),
    ({"workers": True}, "distributed.workers: input should be a valid integer, got True"),
    ({"per_worker": "8"}, "distributed.per_worker: input should be a valid integer, got '8'"),
    ({"ray": "yes"}, "distributed.ray: input should be a valid boolean, got 'yes'"),
    ({"redis_url": 6379}, "distributed.redis_url: input should be a valid string, got 6379"),
    ({"tree": None}, "distributed.tree: input should be a valid string, got None"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "message"), INVALID)
def test_every_key_is_checked_with_its_exact_message(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        XzatomaConfig.from_dict(distributed(**values))
    assert str(info.value) == message


def test_a_section_that_is_not_a_mapping_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        XzatomaConfig.from_dict({"distributed": ["ray"]})
    assert str(info.value) == "distributed must be a mapping of keys, got ['ray']"


def test_a_message_from_the_file_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "distributed:\n  per_worker: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: distributed.per_worker must be at least 1"


def test_a_bad_url_is_never_quoted_back() -> None:
    with pytest.raises(ConfigError) as info:
        XzatomaConfig.from_dict(distributed(redis_url="http://user:hunter2@h:6379/0"))
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "values",
    [
        {"ray": True, "ray_address": "auto", "workers": 1, "per_worker": 1},
        {"ray_address": "local"},
        {"ray_address": "10.0.0.5:6379"},
        {"ray_address": "ray://head.example:10001"},
        {"redis_url": "redis://127.0.0.1:6379/0", "tree": "nightly"},
        {"redis_url": "redis://localhost"},
        {"redis_url": "rediss://user:pass@redis.example:6380/3"},
        {"redis_url": "redis://[::1]:6379/0"},
        {"redis_url": "unix:///run/redis/redis.sock?db=2"},
    ],
)
def test_valid_values_are_kept(values: dict[str, object]) -> None:
    config = XzatomaConfig.from_dict(distributed(**values))
    for key, value in values.items():
        assert getattr(config.distributed, key) == value


def test_a_redis_url_builds_a_redis_quota_with_the_file_s_limits() -> None:
    # Building it connects to nothing: nothing listens at this port, and no error comes.
    url = dead_redis_url()
    config = XzatomaConfig.from_dict(
        {"agent": {"subagent": {"max_executions": 7, "max_total_tokens": 900}},
         "distributed": {"redis_url": url, "tree": "nightly"}}
    )  # fmt: skip
    quota = config.build_quota()
    assert isinstance(quota, RedisQuota)
    assert (quota.url, quota.tree) == (url, "nightly")
    assert quota.limits == QuotaLimits(max_executions=7, max_total_tokens=900)
    assert quota.limits == config.quota_limits()


# -- overrides: the command line beats the file -----------------------------------------------


def test_overrides_set_the_section() -> None:
    file = XzatomaConfig.from_dict(
        distributed(ray_address="auto", workers=3, per_worker=4, redis_url="redis://a/0", tree="a")
    )
    config = apply_overrides(
        file, ray=True, ray_address="b:1", workers=5, per_worker=6, redis_url="redis://b/1",
        quota_tree="b",
    )  # fmt: skip
    assert config.distributed == DistributedSettings(
        ray=True, ray_address="b:1", workers=5, per_worker=6, redis_url="redis://b/1", tree="b"
    )
    unchanged = apply_overrides(file, ray=None, workers=None, redis_url=None, quota_tree=None)
    assert unchanged.distributed == file.distributed


def test_an_override_gets_the_file_s_message() -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(XzatomaConfig(), workers=0)
    assert str(info.value) == "distributed.workers must be at least 1"


class RecordedExecutor(ConfigError):
    """What the command line built its RayExecutor with; raised there, so nothing runs."""


class FakeRayExecutor:
    def __init__(
        self, address: str | None = None, *, workers: int = 2, per_worker: int = 8, **_: object
    ):
        raise RecordedExecutor(
            f"RayExecutor({address!r}, workers={workers}, per_worker={per_worker})"
        )


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xzatoma._ray_executor, "RayExecutor", FakeRayExecutor)


RAY_FILE = "distributed:\n  ray: true\n  ray_address: auto\n  workers: 3\n  per_worker: 4\n"


@pytest.mark.usefixtures("fake_ray")
@pytest.mark.parametrize(
    ("file", "flags", "built"),
    [
        (RAY_FILE, [], "RayExecutor('auto', workers=3, per_worker=4)"),
        (RAY_FILE, ["--ray", "10.0.0.5:6379", "--workers", "5", "--per-worker", "6"],
         "RayExecutor('10.0.0.5:6379', workers=5, per_worker=6)"),
        (RAY_FILE, ["--workers", "1"], "RayExecutor('auto', workers=1, per_worker=4)"),
        ("distributed:\n  ray_address: auto\n", ["--ray"],
         "RayExecutor('auto', workers=2, per_worker=8)"),
        (None, ["--ray"], "RayExecutor(None, workers=2, per_worker=8)"),
        (None, ["--ray=ray://head:10001", "--per-worker", "2"],
         "RayExecutor('ray://head:10001', workers=2, per_worker=2)"),
        (None, ["--ray", "local", "--workers", "4"],
         "RayExecutor('local', workers=4, per_worker=8)"),
    ],
    ids=["file", "flags-over-file", "workers-over-file", "switch-with-file-address", "local",
         "address-with-equals", "ray-local"],
)  # fmt: skip
def test_ray_builds_the_executor_from_the_command_line_over_the_file(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    tmp_path: Path,
    file: str | None,
    flags: list[str],
    built: str,
) -> None:
    config = [] if file is None else ["--config", str(write_config(tmp_path, file))]
    code, out, err = cli(capsys, "batch", str(tasks_file(tmp_path)), *flags, *config,
                         *endpoint(server))  # fmt: skip
    assert (code, out) == (2, "")
    assert one_error_line(err) == f"xzatoma: error: {built}"
    assert server.requests == []


def test_a_batch_in_process_builds_no_executor(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(xzatoma._ray_executor, "RayExecutor", FakeRayExecutor)
    path = write_config(tmp_path, "distributed:\n  ray_address: auto\n  workers: 3\n")
    server.add(chat("a"), chat("a, briefly"))
    code, _, err = cli(capsys, "batch", str(tasks_file(tmp_path, "a")), "--config", str(path),
                       *endpoint(server))  # fmt: skip
    assert code == 0, err
    assert len(server.requests) == 2


# -- usage errors: one line, exit 2, nothing run ----------------------------------------------

USAGE = [
    (["--workers", "3"], None,
     "--workers applies to a batch on Ray, and this one is not: add --ray [ADDRESS] (or "
     "distributed.ray: true in the --config file)"),
    (["--per-worker", "3"], "distributed:\n  ray_address: auto\n",
     "--per-worker applies to a batch on Ray, and this one is not: add --ray [ADDRESS] (or "
     "distributed.ray: true in the --config file)"),
    (["--workers", "3", "--per-worker", "3"], None,
     "--workers and --per-worker apply to a batch on Ray, and this one is not: add --ray "
     "[ADDRESS] (or distributed.ray: true in the --config file)"),
    (["--quota-tree", "nightly"], None,
     "--quota-tree names a quota kept in Redis, and there is none: add --redis-url URL (or "
     "distributed.redis_url in the --config file)"),
    (["--ray", "--max-executions", "3"], None,
     "a batch on Ray needs its quota (agent.subagent.max_executions) where every worker "
     "reaches it: add --redis-url URL (or distributed.redis_url in the --config file), or "
     "run the batch without Ray"),
    ([], "distributed:\n  ray: true\nagent:\n  subagent:\n    max_total_tokens: 9\n"
         "    max_total_time: 60\n",
     "a batch on Ray needs its quota (agent.subagent.max_total_tokens, "
     "agent.subagent.max_total_time) where every worker reaches it: add --redis-url URL (or "
     "distributed.redis_url in the --config file), or run the batch without Ray"),
    (["--ray", "--workers", "0"], None,
     "distributed.workers must be at least 1 (from --workers 0)"),
    (["--ray", "--per-worker", "-1"], None,
     "distributed.per_worker must be at least 1 (from --per-worker -1)"),
    (["--ray="], None, "distributed.ray_address must name a Ray cluster (auto, local, "
     "HOST:PORT or ray://HOST:PORT) or be null, got '' (from --ray )"),
    (["--redis-url", "http://127.0.0.1:6379"], None,
     "distributed.redis_url must start with redis://, rediss:// or unix:// "
     "(from --redis-url http://127.0.0.1:6379)"),
    (["--redis-url", "redis://u:hunter2@127.0.0.1:70000/0"], None,
     "distributed.redis_url has port 70000, outside 1..65535 "
     "(from --redis-url redis://[redacted]@127.0.0.1:70000/0)"),
    (["--redis-url", "redis://127.0.0.1:6379/0", "--quota-tree", ""], None,
     "distributed.tree must name the quota's tree in Redis, got '' (from --quota-tree )"),
    (["--workers", "two"], None,
     "argument --workers: invalid int value: 'two' (see 'xzatoma batch --help')"),
]  # fmt: skip


@pytest.mark.usefixtures("fake_ray")
@pytest.mark.parametrize(("flags", "file", "message"), USAGE, ids=[m[:40] for *_, m in USAGE])
def test_batch_usage_errors(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    tmp_path: Path,
    flags: list[str],
    file: str | None,
    message: str,
) -> None:
    config = [] if file is None else ["--config", str(write_config(tmp_path, file))]
    code, out, err = cli(capsys, "batch", str(tasks_file(tmp_path)), *flags, *config,
                         *endpoint(server))  # fmt: skip
    assert (code, out) == (2, "")
    assert one_error_line(err) == f"xzatoma: error: {message}"
    assert "hunter2" not in err
    assert server.requests == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quota-tree", "nightly"], "--quota-tree names a quota kept in Redis, and there is "
         "none: add --redis-url URL (or distributed.redis_url in the --config file)"),
        (["--workers", "3"], "unrecognized arguments: --workers 3"),
        (["--ray"], "unrecognized arguments: --ray"),
    ],
)  # fmt: skip
def test_run_usage_errors(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    flags: list[str],
    message: str,
) -> None:
    code, out, err = cli(capsys, "run", "hi", *flags, *endpoint(server))
    assert (code, out) == (2, "")
    assert message in one_error_line(err)
    assert server.requests == []


def test_ray_before_file_takes_file_as_its_address(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # As documented: an optional value is greedy, so --ray goes after FILE (or --ray=ADDRESS).
    code, _, err = cli(capsys, "batch", "--ray", str(tasks_file(tmp_path)), "--model", "m")
    assert code == 2
    assert "the following arguments are required: FILE" in one_error_line(err)


def test_a_run_ignores_the_ray_keys_of_a_shared_file(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(xzatoma._ray_executor, "RayExecutor", FakeRayExecutor)
    path = write_config(tmp_path, RAY_FILE)
    server.add(chat("hello"))
    code, out, _ = cli(capsys, "run", "hi", "--config", str(path), *endpoint(server))
    assert (code, out) == (0, "hello\n")


# -- a Redis that cannot be reached: exit 2 before any model call ------------------------------


@pytest.mark.parametrize("command", ["run", "batch"])
def test_an_unreachable_redis_is_exit_2_before_any_model_call(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path, command: str
) -> None:
    url = dead_redis_url()
    what = ["hi"] if command == "run" else [str(tasks_file(tmp_path))]
    code, out, err = cli(capsys, command, *what, "--redis-url", url, "--quota-tree", "t1",
                         "--max-executions", "3", *endpoint(server))  # fmt: skip
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert line.startswith(f"xzatoma: error: the shared quota (tree 't1') at {url} could not ")
    assert line.endswith("no subagent starts without it (is redis-server running there?)")
    assert server.requests == []


def test_the_command_line_url_and_tree_beat_the_file_s(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    file_url, flag_url = dead_redis_url(), dead_redis_url()
    path = write_config(tmp_path, f"distributed:\n  redis_url: {file_url}\n  tree: from-file\n")
    run = ["run", "hi", "--config", str(path), *endpoint(server)]

    _, _, err = cli(capsys, *run)
    assert f"the shared quota (tree 'from-file') at {file_url} " in one_error_line(err)
    _, _, err = cli(capsys, *run, "--redis-url", flag_url)
    assert f"the shared quota (tree 'from-file') at {flag_url} " in one_error_line(err)
    _, _, err = cli(capsys, *run, "--quota-tree", "from-flag")
    assert f"the shared quota (tree 'from-flag') at {file_url} " in one_error_line(err)
    assert server.requests == []


def test_a_password_in_the_url_is_not_printed(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    code, _, err = cli(capsys, "run", "hi", "--redis-url", url, *endpoint(server))
    assert code == 2
    assert "hunter2" not in err
    assert "redis://:***@127.0.0.1:" in one_error_line(err)


# -- a real redis-server ----------------------------------------------------------------------


def run_xzatoma(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(),
    )  # fmt: skip


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=90)
    return proc.returncode, out, err


def executions_in_redis(url: str, tree: str, limits: QuotaLimits) -> int:
    quota = RedisQuota(url, tree=tree, limits=limits)
    try:
        return quota.statistics().executions
    finally:
        quota.close()


@pytest.mark.timeout(120)
def test_two_batch_processes_share_one_quota(
    redis_server: RedisServer, server: ScriptedHTTPServer, tmp_path: Path, tree: str
) -> None:
    # 2 processes x 3 tasks against 4 executions in the config: 4 start in total, wherever.
    path = write_config(
        tmp_path, "agent:\n  subagent:\n    max_executions: 4\n    summary_prompt: null\n"
    )
    server.add(*[chat("done") for _ in range(6)])
    shared = ["--config", str(path), "--redis-url", redis_server.url, "--quota-tree", tree]
    procs = []
    for name in ("abc", "xyz"):
        (tmp_path / name).mkdir()
        tasks = tasks_file(tmp_path / name, name)
        procs.append(run_xzatoma("batch", str(tasks), *shared, "--json", *endpoint(server)))
    results: list[dict[str, Any]] = []
    for proc in procs:
        code, out, err = finished(proc)
        assert code in (0, 1), err
        assert "Traceback" not in err
        results.extend(json.loads(out)["results"])
    outcomes = sorted((r["status"], r["error_type"]) for r in results)
    assert outcomes == [("complete", None)] * 4 + [("failed", "quota_exceeded")] * 2
    refused = [r["error"] for r in results if r["status"] == "failed"]
    assert refused == ["Resource quota exceeded: execution limit reached (4/4)"] * 2
    assert len(server.requests) == 4  # one model call per task that started
    assert executions_in_redis(redis_server.url, tree, QuotaLimits(max_executions=4)) == 4


@pytest.mark.timeout(120)
def test_separate_run_processes_share_one_quota(
    redis_server: RedisServer, server: ScriptedHTTPServer, tree: str
) -> None:
    spawn = chat(None, calls=[("subagent", {"label": "helper", "task_prompt": "find x"})])
    argv = ["run", "what is x?", "--redis-url", redis_server.url, "--quota-tree", tree,
            "--max-executions", "1", "--json", *endpoint(server)]  # fmt: skip
    # One after the other, so the scripted replies go to the process they were written for.
    server.add(spawn, chat("x is 42"), chat("x=42"), chat("The answer is 42."))
    code, out, err = finished(run_xzatoma(*argv))
    assert code == 0, err
    assert json.loads(out)["children"][0]["status"] == "complete"

    server.add(spawn, chat("No helper was free."))
    code, out, err = finished(run_xzatoma(*argv))
    assert code == 0, err
    assert json.loads(out)["output"] == "No helper was free."
    told = server.requests[-1].json()["messages"][-1]["content"]
    assert told == "Error: Resource quota exceeded: execution limit reached (1/1)"
    assert len(server.requests) == 6
    assert executions_in_redis(redis_server.url, tree, QuotaLimits(max_executions=1)) == 1


def test_a_tree_made_with_other_limits_is_exit_2_before_any_model_call(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    server: ScriptedHTTPServer,
    tmp_path: Path,
    tree: str,
) -> None:
    assert executions_in_redis(redis_server.url, tree, QuotaLimits(max_executions=5)) == 0
    code, out, err = cli(capsys, "batch", str(tasks_file(tmp_path)), "--redis-url",
                         redis_server.url, "--quota-tree", tree, "--max-executions", "6",
                         *endpoint(server))  # fmt: skip
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert f"the quota tree {tree!r} at {redis_server.url} was made with other limits" in line
    assert server.requests == []


@pytest.mark.timeout(60)
def test_a_redis_that_does_not_answer_is_exit_2_before_any_model_call(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    server: ScriptedHTTPServer,
    tmp_path: Path,
    tree: str,
) -> None:
    redis_server.pause()
    try:
        code, out, err = cli(capsys, "batch", str(tasks_file(tmp_path)), "--redis-url",
                             redis_server.url, "--quota-tree", tree, *endpoint(server))  # fmt: skip
    finally:
        redis_server.resume()
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert f"the shared quota (tree {tree!r}) at {redis_server.url} could not be reached" in line
    assert server.requests == []


def test_file_sd_without_metrics_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    code, out, err = cli(capsys, "batch", str(tasks_file(tmp_path)), "--ray",
                         "--file-sd", str(tmp_path / "t.json"), *endpoint(server))  # fmt: skip
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        "xzatoma: error: --file-sd lists the /metrics of the workers, which serve one only "
        "when the batch does: add --metrics-port PORT (or telemetry.enabled in the --config "
        "file)"
    )
    assert server.requests == []
