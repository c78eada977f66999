"""Quiet-by-default logging of the three CLIs (`pipeline`, `trainer`, `serving`); --verbose shows everything.

TensorFlow's C++ logs (oneDNN and CUDA probes, "Sharding callback duration", ...) would otherwise
fill pages before the CLI's own output. `configure` runs in each `main()` before TensorFlow loads:
- TF_CPP_MIN_LOG_LEVEL=2 hides C++ INFO and WARNING; on a machine without an NVIDIA device it is 3,
  which also hides the E-level CUDA probe "failed call to cuInit" (CUDA_VISIBLE_DEVICES="" does not:
  TF still calls cuInit). A real failure still ends in a Python exception. A value the user set wins.
- the lines TF's libraries print while they load, before absl logging starts ("All log messages
  before absl::InitializeLog() ...", oneDNN, "Could not find cuda drivers") ignore that level: TF is
  imported here with stderr captured, and only lines that are not C++ log lines are passed on.
- the Python loggers of TF, absl, Beam and keras-tuner log WARNING and above; ours (`pipeline`,
  `trainer`, `serving`) keep INFO.
Subprocesses (Beam workers) inherit the environment variables.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = ("show everything TensorFlow, Beam and keras-tuner log (C++ INFO/WARNING lines, CUDA probes, "
                "library INFO); default: our own INFO lines and the libraries' warnings and errors only")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
LIBRARY_LOGGERS = ("tensorflow", "absl", "apache_beam", "keras_tuner", "tensorflow_transform", "tfx_bsl")
# A C++ log line of absl/TF ("I0000 00:00:1796571654.813007   12962 port.cc:153] ...") or absl's
# pre-initialisation banner.
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] |^WARNING: All log messages before absl")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """--verbose on a parser or subcommand parser (SUPPRESS: a subcommand's default never hides the global one)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def wants_verbose(argv: Sequence[str]) -> bool:
    """--verbose anywhere before a `--` (global or after the subcommand)."""
    args = list(argv)
    return VERBOSE_FLAG in (args[:args.index("--")] if "--" in args else args)


def _has_gpu() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def configure(verbose: bool, import_tensorflow: bool = True) -> None:
    """Sets the log levels for this process and its children; imports TensorFlow quietly unless verbose."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _has_gpu() else "3")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if import_tensorflow and "tensorflow" not in sys.modules:
        _import_tensorflow_filtered()
        logging.getLogger("tensorflow").setLevel(logging.WARNING)  # TF resets its logger's level on import


def _import_tensorflow_filtered() -> None:
    """Imports TensorFlow with fd 2 captured, then passes on the lines that are not C++ log lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not CPP_LOG_LINE.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
