"""Packaging. The example bots (handlers/), the units (systemd/) and the sample config
(config/) stay at the top of the repository, where a reader of the checkout finds them;
`build_py` copies them into the package as chatdaemon/data/ so that a wheel carries them
too (chatdaemon/shipped.py finds them in either place)."""

import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("handlers", "systemd", "config")   # top-level directories shipped as package data


def read_version() -> str:
    """The one version string lives in chatdaemon/__init__.py."""
    text = (HERE / "chatdaemon" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


class BuildWithShippedFiles(build_py):
    """build_py, plus the shipped top-level directories copied to chatdaemon/data/."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "chatdaemon" / "data"
        for name in SHIPPED:
            if (target / name).exists():
                shutil.rmtree(target / name)
            shutil.copytree(HERE / name, target / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))


setup(
    name="chatdaemon",
    version=read_version(),
    description="A self-hosted Telegram chat-bot daemon that never loses a message",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    python_requires=">=3.11",
    packages=find_packages(include=["chatdaemon", "chatdaemon.*"]),
    package_data={"chatdaemon": ["starter/*"]},
    cmdclass={"build_py": BuildWithShippedFiles},
    install_requires=[
        "requests>=2.31,<3",
        "jinja2>=3.1.6,<4",
        "PyYAML>=6.0,<7",
        "python-daemon>=3.0,<4",
        # the read side (`status`, `chats`): rows_where and count_where on a read-only
        # connection; tabulate (a dependency of sqlite-utils) prints tables as its CLI does
        "sqlite-utils>=4,<5",
        "tabulate>=0.9",
        "regex>=2023.12.25,<2028",  # authors' patterns: re's dialect, a timeout, no GIL held
        "urllib3>=1.26,<3",  # its connection classes let a request's total deadline cut it off
    ],
    extras_require={
        # wheel: tests/test_install.py builds one; pytest-xdist: the suite runs on 6 workers
        "test": ["pytest>=8", "pytest-xdist>=3.5,<4", "wheel>=0.40"],
        # dev: the linters CI runs, and the stubs mypy needs for our untyped dependencies
        "dev": ["ruff>=0.4", "mypy>=1.8", "types-requests", "types-PyYAML", "types-regex",
                "types-tabulate"],
        # chart: pimonitor's /chart draws a PNG (Agg backend, no display); imported only
        # when a chart is drawn, so a bot without charts never pays for it
        "chart": ["matplotlib>=3.7,<4"],
    },
    entry_points={"console_scripts": ["chatdaemon = chatdaemon.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Topic :: Communications :: Chat",
    ],
)
