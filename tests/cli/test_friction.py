"""What a newcomer trips over first, each through the real CLI in a subprocess: a missing
``xds`` extra, YAML errors and empty files that name the file, ``--version``, a configuration
that listens nowhere, and which worker wrote a log line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import TIMEOUT, is_free, proxy, run_cli, write_config

ROOT = Path(__file__).resolve().parents[2]
XDS_HINT = "install trio-mesh[xds] (from a checkout: pip install '.[xds]')"

# Runs the CLI with the xds extra's modules unimportable, as on an install without the extra:
# a meta-path finder placed first refuses them (and their submodules) before any other finder.
WITHOUT_XDS = """
import sys
BLOCKED = ("betterproto2", "envoy_data_plane", "grpclib", "trio_asyncio")
class NoXds:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoXds())
from trio_mesh.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_without_xds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_XDS, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )


def xds_config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path,
        {
            "xds": {"address": "127.0.0.1:1", "node_id": "n1"},
            "servers": [
                {
                    "listeners": [
                        {
                            "name": "healthz",
                            "address": f"127.0.0.1:{port}",
                            "filter_chains": [
                                {"filters": [{"type": "tcp_proxy", "config": {"cluster": "c"}}]}
                            ],
                        }
                    ]
                }
            ],
            "cluster_manager": {
                "clusters": [{"name": "c", "type": "STATIC", "hosts": [{"address": "127.0.0.1:1"}]}]
            },
        },
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_validate_without_the_xds_extra_says_what_to_install(tmp_path):
    path = xds_config(tmp_path, free_port())
    result = cli_without_xds("validate", str(path))
    assert result.returncode == 1, result.stderr
    assert XDS_HINT in result.stderr
    assert "valid" not in result.stdout
    assert "Traceback" not in result.stderr


def test_run_without_the_xds_extra_says_so_before_binding(tmp_path):
    port = free_port()
    path = xds_config(tmp_path, port)
    result = cli_without_xds("run", str(path))
    assert result.returncode == 1, result.stderr
    assert XDS_HINT in result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    assert "listening on" not in result.stderr
    assert is_free(port)


def test_the_shipped_xds_example_without_the_extra(tmp_path):
    result = cli_without_xds("validate", "conf/xds.yaml")
    assert result.returncode == 1
    assert "conf/xds.yaml: xDS needs the xds extra" in result.stderr
    assert XDS_HINT in result.stderr


def test_the_hook_is_honest_a_config_without_xds_still_validates(tmp_path):
    # The same blocked imports do not affect a configuration that names no control plane.
    result = cli_without_xds("validate", "conf/tcp.yaml")
    assert result.returncode == 0, result.stderr


def test_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("servers:\n  - listeners: [\n      {name: a\n", encoding="utf-8")
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert "<unicode string>" not in result.stderr
    m = re.search(rf"^{re.escape(str(path))}:(\d+):(\d+): invalid YAML: ", result.stderr, re.M)
    assert m is not None, result.stderr
    assert (int(m[1]), int(m[2])) >= (3, 1)
    assert f'in "{path}", line' in result.stderr


def test_empty_file_names_the_file(tmp_path):
    for name, text in (("empty.yaml", ""), ("comments.yml", "# nothing yet\n"), ("n.json", "null")):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        for command in ("validate", "run"):
            result = run_cli(command, str(path))
            assert result.returncode == 1
            assert f"{path}: empty configuration file" in result.stderr
            assert "NoneType" not in result.stderr


def test_a_list_at_the_top_level_names_the_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert f"{path}: expected a mapping at the top level, got list" in result.stderr


def test_dash_dash_version():
    import trio_mesh

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"trio-mesh {trio_mesh.__version__}"


def test_drain_timeout_is_in_the_run_usage():
    result = run_cli("run", "--help")
    assert result.returncode == 0
    assert "--drain-timeout" in result.stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    synopsis = readme.split("## Running it", 1)[1].split("```", 2)[1]
    assert "--drain-timeout" in synopsis and "--version" in synopsis


EMPTY = {"servers": []}


def test_validate_warns_when_nothing_listens(tmp_path):
    path = write_config(tmp_path, EMPTY)
    result = run_cli("validate", str(path))
    assert result.returncode == 0
    assert "warning: servers: no listeners configured" in result.stderr
    assert "1 warning(s)" in result.stdout


def test_run_warns_when_nothing_listens(tmp_path):
    path = write_config(tmp_path, {"cluster_manager": {"clusters": []}})
    with proxy(path) as p:
        p.wait_for(re.compile(r"WARNING .*config: servers: no listeners configured"))
        p.wait_for(re.compile(r"trio-mesh \S+ ready$"))


def test_each_worker_line_says_which_worker_wrote_it(tmp_path):
    doc = {
        "servers": [
            {
                "listeners": [
                    {
                        "name": "in",
                        "address": "127.0.0.1:0",
                        "filter_chains": [{"filters": [{"type": "echo"}]}],
                    }
                ]
            }
        ]
    }
    path = write_config(tmp_path, doc)
    with proxy(path, "--workers", "2") as p:
        tagged = re.compile(r"^\[(worker \d)\] \S+ \S+ INFO trio_mesh: trio-mesh \S+ ready \(pid")
        tags = sorted(p.wait_for(tagged)[1] for _ in range(2))
        assert tags == ["worker 0", "worker 1"], p.text
        # Every line a worker wrote is tagged; the supervisor's own lines (its workers, its
        # upgrade socket) are not.
        supervisor = ("trio_mesh.workers:", "trio_mesh.upgrade:")
        for line in p.lines:
            ours = any(name in line for name in supervisor)
            assert line.startswith("[worker ") == (not ours), p.text


def test_public_api_from_the_package_lazily():
    # A fresh interpreter: importing trio_mesh alone loads neither the config layer nor trio.
    code = (
        "import sys, trio_mesh\n"
        "assert 'trio' not in sys.modules and 'trio_mesh.config' not in sys.modules\n"
        "from trio_mesh import (ConfigError, MeshConfig, Server, StartupError, load_config,\n"
        "    parse_config)\n"
        "from trio_mesh.errors import StartupError as S\n"
        "from trio_mesh.server import Server as Srv\n"
        "assert StartupError is S and Server is Srv\n"
        "cfg = parse_config({'servers': [{'listeners': [{'name': 'a', 'address': '127.0.0.1:0',\n"
        "    'filter_chains': [{'filters': [{'type': 'echo'}]}]}]}]}).config\n"
        "assert isinstance(cfg, MeshConfig) and cfg.listeners[0].name == 'a'\n"
        "try:\n"
        "    parse_config({'servers': 3})\n"
        "except ConfigError as e:\n"
        "    print(e.errors)\n"
        "print(sorted(trio_mesh.__all__))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    for name in ("Server", "load_config", "parse_config", "StartupError", "ConfigError"):
        assert repr(name) in result.stdout.splitlines()[-1]


def readme_embedding_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Embedded in a Trio program or test", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_embedding_example_runs_as_written():
    code = readme_embedding_example()
    assert "parse_config(DOC)" in code and "StartupError" in code and "collect_metrics" in code
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "connections: 1"
    assert re.fullmatch(r"listener\.127\.0\.0\.1_\d+\.downstream_cx_total 1", lines[1]), lines


def test_readme_embedding_example_reports_a_bad_config_by_path():
    code = readme_embedding_example().replace('"127.0.0.1:0"', '"127.0.0.1:x"')
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
    )
    assert result.returncode == 1
    assert result.stderr.startswith("servers[0].listeners[0].address: expected host:port")


def test_readme_prerequisites_and_intro():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    prereq = readme.split("## Prerequisites", 1)[1].split("## ", 1)[0]
    for needed in ("git clone", "3.11", "python3 -m venv .venv && . .venv/bin/activate", "PEP 668"):
        assert needed in prereq
    intro = readme.split("## Prerequisites", 1)[0]
    assert "next milestone" not in intro
    for feature in ("xDS", "admin API", "Prometheus", "tracing", "health checks", "registr"):
        assert feature in intro, feature


def test_an_embedded_server_without_the_xds_extra_raises_startup_error(tmp_path):
    port = free_port()
    code = WITHOUT_XDS.split("from trio_mesh.cli import main")[0] + (
        "import trio\n"
        "from trio_mesh import Server, StartupError, load_config\n"
        "async def main():\n"
        "    async with trio.open_nursery() as nursery:\n"
        "        await nursery.start(Server(load_config(sys.argv[1])).run)\n"
        "try:\n"
        "    trio.run(main)\n"
        "except* StartupError as group:\n"
        "    print(group.exceptions[0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(xds_config(tmp_path, port))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert XDS_HINT in result.stdout
    assert is_free(port)
