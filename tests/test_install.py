"""The installed package is enough: a wheel built from the sources, installed into a scratch
environment, runs the example bot from outside any checkout; and the systemd units that
ship with it pass systemd's own checks."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

import chatdaemon

SOURCES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "chatdaemon",
           "handlers", "systemd", "config")


def can_build_wheels() -> bool:
    try:
        import setuptools  # noqa: F401
        import wheel  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def wheel_file(tmp_path_factory) -> Path:
    """`pip wheel --no-deps` of a copy of the sources (the checkout itself stays untouched)."""
    if not can_build_wheels():
        pytest.skip("setuptools and wheel are needed to build the wheel here (pip install '.[test]')")
    work = tmp_path_factory.mktemp("build")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("chatdaemon-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel_file, tmp_path_factory) -> Path:
    """A scratch environment with the wheel installed; its dependencies come from this
    environment's site-packages (a .pth line, which adds the directory but runs none of its
    .pth files, so the checkout's editable install stays out)."""
    scratch = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(scratch)], check=True,
                   timeout=120)
    python = scratch / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "-q", str(wheel_file)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(purelib, "chatdaemon_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return scratch


def run_installed(scratch: Path, *args: str, cwd: Path, stdin: str | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHATDAEMON_TOKEN")}
    return subprocess.run([str(scratch / "bin" / "chatdaemon"), *args], input=stdin, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_wheel_carries_the_examples_units_sample_config_starter_and_license(wheel_file):
    names = set(zipfile.ZipFile(wheel_file).namelist())
    for expected in ("chatdaemon/data/handlers/counter/bot.yaml",
                     "chatdaemon/data/handlers/pimonitor/pimonitor.py",
                     "chatdaemon/data/systemd/chatdaemon.service",
                     "chatdaemon/data/systemd/chatdaemon@.service",
                     "chatdaemon/data/systemd/chatdaemon-sensors.conf",
                     "chatdaemon/data/config/chatdaemon.yaml",
                     "chatdaemon/starter/bot.yaml",
                     "chatdaemon/status.py"):
        assert expected in names, sorted(names)
    assert any(re.fullmatch(r"chatdaemon-[^/]+\.dist-info/(licenses/)?LICENSE", n) for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert wheel_file.name.startswith(f"chatdaemon-{chatdaemon.__version__}-")


def test_installed_package_runs_the_default_bot_from_outside_a_checkout(installed, tmp_path):
    located = subprocess.run([str(installed / "bin" / "python"), "-c",
                              "import chatdaemon; print(chatdaemon.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert located.stdout.strip().startswith(str(installed)), located.stdout + located.stderr

    version = run_installed(installed, "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"chatdaemon {chatdaemon.__version__}"

    # no --handlers: the default (handlers/counter) is not in tmp_path, so the shipped copy answers
    chat = run_installed(installed, "chat", cwd=tmp_path, stdin="hello\nagain\nthird\n")
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert re.findall(r"^bot: (\d+)$", chat.stdout, re.M) == ["1", "2", "3"], chat.stdout


def test_installed_init_writes_a_bot_that_check_and_chat_accept(installed, tmp_path):
    init = run_installed(installed, "init", "mybot", cwd=tmp_path)
    assert init.returncode == 0, init.stdout + init.stderr
    config = tmp_path / "mybot" / "chatdaemon.yaml"
    check = run_installed(installed, "check", "--config", str(config), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "handlers: 3" in check.stdout
    chat = run_installed(installed, "chat", "--config", str(config), cwd=tmp_path,
                         stdin="my name is Ada\nwho am I?\n")
    assert "bot: You are Ada." in chat.stdout, chat.stdout + chat.stderr
    again = run_installed(installed, "init", "mybot", cwd=tmp_path)
    assert again.returncode == 78 and "refusing to overwrite" in again.stderr


def test_installed_package_names_its_units_and_copies_its_examples(installed, tmp_path):
    systemd = run_installed(installed, "files", "systemd", cwd=tmp_path)
    assert systemd.stdout.strip().startswith(str(installed)), systemd.stdout + systemd.stderr
    assert (Path(systemd.stdout.strip()) / "chatdaemon-sensors.conf").is_file()
    init = run_installed(installed, "init", "pi", "--example", "pimonitor", cwd=tmp_path)
    assert init.returncode == 0, init.stdout + init.stderr
    check = run_installed(installed, "check", "--config", str(tmp_path / "pi" / "chatdaemon.yaml"),
                          cwd=tmp_path)
    assert check.returncode == 0 and "pimonitor:PiMonitor" in check.stdout, check.stdout + check.stderr


# -- the units -------------------------------------------------------------------------------

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed here")


def unit_copy(directory: Path, source: str, name: str, drop_in: bool = False) -> Path:
    """A shipped unit pointing at this environment's chatdaemon; optionally with the sensors
    drop-in installed beside it the way systemd finds drop-ins (NAME.d/*.conf)."""
    executable = shutil.which("chatdaemon") or str(Path(sys.executable).parent / "chatdaemon")
    if not os.access(executable, os.X_OK):
        pytest.skip("no chatdaemon executable to point the unit at")
    directory.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "systemd" / source).read_text()
    copy = directory / name
    copy.write_text(text.replace("/opt/chatdaemon/.venv/bin/chatdaemon", executable))
    if drop_in:
        (directory / f"{name}.d").mkdir()
        shutil.copy(ROOT / "systemd" / "chatdaemon-sensors.conf", directory / f"{name}.d" / "sensors.conf")
    return copy


def exposure(unit: Path) -> tuple[float, str]:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    if result.returncode != 0 and re.search(r"(unrecognized|unknown) option", output, re.I):
        pytest.skip(f"this systemd-analyze has no offline security check: {output.strip()[:200]}")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert found, output
    return float(found.group(1)), output


@needs_systemd_analyze
def test_template_unit_verifies_with_one_instance_per_bot(tmp_path):
    unit = unit_copy(tmp_path / "units", "chatdaemon@.service", "chatdaemon@shop.service")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines()
            if "chatdaemon@" in line and not re.search(r"/(etc|opt|var/lib)/chatdaemon", line)]
    assert result.returncode == 0 and ours == [], output
    text = unit.read_text()
    for line in ("StateDirectory=chatdaemon/%i", "LoadCredential=token:/etc/chatdaemon/%i.token",
                 "--config /etc/chatdaemon/%i.yaml", "--db %S/chatdaemon/%i/chatdaemon.sqlite3",
                 "EnvironmentFile=-/etc/chatdaemon/environment"):
        assert line in text


@needs_systemd_analyze
@pytest.mark.parametrize("source, name", [("chatdaemon.service", "chatdaemon.service"),
                                          ("chatdaemon@.service", "chatdaemon@shop.service")])
def test_units_stay_hardened_and_the_sensors_drop_in_loosens_little(tmp_path, source, name):
    plain, output = exposure(unit_copy(tmp_path / "plain", source, name))
    assert plain <= 2.0, output
    sensors, output = exposure(unit_copy(tmp_path / "sensors", source, name, drop_in=True))
    # the drop-in was read: devices are now visible, through the device allow-list only
    assert re.search(r"✗ PrivateDevices=", output), output
    assert "char-i2c:rw" in output and "char-gpiochip:rw" in output, output
    assert sensors <= 2.5, output


def test_template_and_drop_in_keep_the_hardening_of_the_unit():
    base = (ROOT / "systemd" / "chatdaemon.service").read_text()
    template = (ROOT / "systemd" / "chatdaemon@.service").read_text()
    hardening = base[base.index("# Hardening"):]
    assert hardening in template
    drop_in = (ROOT / "systemd" / "chatdaemon-sensors.conf").read_text()
    settings = [line.split("=")[0] for line in drop_in.splitlines() if re.match(r"^[A-Z]\w+=", line)]
    assert set(settings) == {"PrivateDevices", "DeviceAllow", "SupplementaryGroups", "SystemCallFilter"}
    assert "DevicePolicy=closed" in base
