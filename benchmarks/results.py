"""Writes one benchmark's section of benchmarks/RESULTS.md, keeping the others.

Every section starts with `## <name>` and records the date, the machine
(`nproc`, CPU model) and the exact command, so figures are never quoted
without the conditions they were measured under.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import re
import shlex
import sys

from pipeline.atomic import write_text_atomic

RESULTS = pathlib.Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """`nproc` and the CPU model, e.g. '2 cores, Intel(R) Xeon(R) ...'."""
    model = "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {model}"


def header_command(argv: list[str] | None = None) -> str:
    """The command line (this process's, or `argv`), shell-quoted."""
    return " ".join(shlex.quote(a) for a in (argv if argv is not None else ["python", *sys.argv]))


def header(argv: list[str] | None = None) -> str:
    """Date, machine and command lines for the top of a section."""
    command = header_command(argv)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        load = pathlib.Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        load = "unknown"
    return f"- date: {now}\n- machine: {machine()}, 1-min load average at start {load}\n- command: `{command}`\n"


def write_section(name: str, body: str) -> pathlib.Path:
    """Replaces (or appends) the `## name` section of RESULTS.md, temp-then-rename."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    write_text_atomic(RESULTS, text)
    return RESULTS


def publish(name: str, body: str, write: bool = True) -> None:
    """Prints a benchmark's `## name` section and, unless `write` is false (--no-write), writes it to RESULTS.md."""
    print(body)
    if write:
        print(f"written: {write_section(name, body)}")
