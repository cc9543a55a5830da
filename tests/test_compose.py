"""docker-compose.yml: valid for Debian's docker-compose, and every command a real CLI call.

No Docker engine runs on the development and CI machines, so the services cannot be
started here; the file is validated instead.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rtserver.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The compose file as docker-compose itself resolves it."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (Debian package) is not installed; `make test` installs it")
    result = subprocess.run([tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def program_argv(command: str) -> list[str]:
    """The project command inside a service command (skipping an xvfb-run wrapper)."""
    argv = shlex.split(command)
    if argv[0] == "xvfb-run":
        argv = argv[1:]
        while argv[0].startswith("-"):
            argv = argv[2:] if argv[0] == "-s" else argv[1:]
    return argv


def test_services_are_the_server_bridge_and_display(resolved):
    assert {"server", "bridge", "display", "simulate", "keys"} <= set(resolved["services"])


@pytest.mark.parametrize(("service", "program", "subcommand"), [
    ("simulate", "rtserver", "simulate"),
    ("keys", "rtserver", "keys"),
    ("server", "rtserver", "serve"),
    ("bridge", "rtserver", "send"),
    ("display", "feedback-display", None),
])
def test_each_command_parses_with_the_projects_cli(resolved, service, program, subcommand):
    """Argparse exits (SystemExit) on any unknown option or missing argument."""
    argv = program_argv(resolved["services"][service]["command"])
    assert argv[0] == program
    if program == "rtserver":
        assert build_parser().parse_args(argv[1:]).command == subcommand
    else:
        from feedback_display.cli import build_parser as display_parser

        args = display_parser().parse_args(argv[1:])
        assert args.server == "tcp://server:5556"


def test_every_link_uses_the_keys_the_keys_service_makes(resolved):
    """Server, bridge and display name the folder `rtserver keys` writes; the server binds
    beyond the loopback only with CURVE; only the keys service can write the keys.
    """
    from feedback_display.cli import build_parser as display_parser
    from rtserver.curve import is_loopback

    services = resolved["services"]
    folder = str(build_parser().parse_args(program_argv(services["keys"]["command"])[1:]).folder)
    server = build_parser().parse_args(program_argv(services["server"]["command"])[1:])
    bridge = build_parser().parse_args(program_argv(services["bridge"]["command"])[1:])
    display = display_parser().parse_args(program_argv(services["display"]["command"])[1:])
    assert server.curve == bridge.curve == str(display.curve) == folder
    assert not server.insecure
    assert not all(is_loopback(e) for e in (server.volumes, server.feedback, server.results))
    assert "keys" in services["server"]["depends_on"]
    for name, service in services.items():
        mounts = [mount(v) for v in service.get("volumes", [])]
        keys = [m for m in mounts if m["target"] == folder]
        assert len(keys) == 1, f"{name} does not mount the keys volume at {folder}"
        assert keys[0]["source"] == "keys"
        assert keys[0]["read_only"] is (name != "keys"), name


def mount(volume: str | dict) -> dict:
    """A service's volume, in short (``src:dst:mode``) or long syntax, as one dict."""
    if isinstance(volume, dict):
        return {"source": volume.get("source"), "target": volume["target"],
                "read_only": bool(volume.get("read_only", False))}
    source, target, *mode = volume.split(":")
    return {"source": source, "target": target, "read_only": mode == ["ro"]}


def test_ports_are_published_on_loopback_only(resolved):
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond the loopback"


def test_bridge_replays_the_file_the_simulator_writes(resolved, tmp_path):
    """The paths in the compose file are the ones `rtserver simulate` really produces."""
    from rtserver.sim import simulate_subject

    simulate = build_parser().parse_args(program_argv(resolved["services"]["simulate"]["command"])[1:])
    subject = simulate_subject(tmp_path, simulate.subject, simulate.group, simulate.seed,
                               shape=(24, 24, 16), voxel_size=8.0)
    bridge = build_parser().parse_args(program_argv(resolved["services"]["bridge"]["command"])[1:])
    server = build_parser().parse_args(program_argv(resolved["services"]["server"]["command"])[1:])
    data = Path("/data/bids")
    assert tmp_path / bridge.source.relative_to(data) == subject.runs[0].bold
    if server.model is not None:  # the demo decoder, copied into the image from models/
        model = ROOT / Path(server.model).relative_to("/app")
        assert model.exists(), f"--model {server.model}: {model} is not in the repository"
        assert "COPY models ./models" in (ROOT / "Dockerfile").read_text()
        return
    assert tmp_path / Path(server.roi).relative_to(data) == subject.runs[0].rois
    names = {row.split("\t")[1] for row in
             subject.runs[0].rois_tsv.read_text().splitlines()[1:] if row.strip()}
    assert server.target in names, f"--target {server.target} is not one of the ROIs {names}"
