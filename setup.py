from setuptools import find_packages, setup

setup(
    name="chatdaemon",
    version="0.1.0",
    description="A self-hosted Telegram chat-bot daemon that never loses a message",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["chatdaemon", "chatdaemon.*"]),
    install_requires=[
        "requests>=2.31,<3",
        "jinja2>=3.1.6,<4",
        "PyYAML>=6.0,<7",
        "python-daemon>=3.0,<4",
        "regex>=2023.12.25,<2028",  # authors' patterns: re's dialect, a timeout, no GIL held
        "urllib3>=1.26,<3",  # its connection classes let a request's total deadline cut it off
    ],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.4"],
    },
    entry_points={"console_scripts": ["chatdaemon = chatdaemon.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Communications :: Chat",
    ],
)
