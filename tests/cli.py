"""Running train.py / evaluate.py / reproduce.py as a user would, for the tests of the scripts.

`run` calls the script's ``main(argv)`` in the test process by default, with its output captured and
one thread (as a subprocess would have, with OMP_NUM_THREADS=1): the same code path from the command
line on, without the two to four seconds a new interpreter spends importing torch. What only a new
process shows (the ``if __name__ == "__main__"`` entry point, a crash's exit status, signals, torchrun)
is run with ``fresh_process=True``, or with Popen by the tests that kill it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
_SCRIPTS = {"train.py": "train", "evaluate.py": "evaluate", "reproduce.py": "reproduce"}


def run(*args: str, check: bool = True, fresh_process: bool = False) -> subprocess.CompletedProcess:
    """`python ARGS` in the repository root; with `check`, a non-zero exit fails with the output.

    A script of this repository runs in this process unless `fresh_process`; anything else (``-m``,
    ``-c``) always runs in a new one.
    """
    if fresh_process or args[0] not in _SCRIPTS:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=ENV,
                              timeout=600)
    else:
        proc = _run_main(_SCRIPTS[args[0]], list(args[1:]))
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _run_main(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    threads, cwd = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(1)
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's usage errors, as the interpreter would report them
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
            except Exception:  # an uncaught error: a traceback and status 1, as from a new interpreter
                traceback.print_exc()
                code = 1
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
    return subprocess.CompletedProcess([sys.executable, f"{module}.py", *argv], code, out.getvalue(), err.getvalue())


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> training loss, from a run folder's log.jsonl."""
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())}
