"""Run many ``medrecon`` command lines as real processes, cheaply: one fresh interpreter imports
the CLI (and torch) once, then forks one child per command line.  Each child is a separate
process running :func:`medrecon.cli.main.main` with its own stdout, stderr and exit status, as
``medrecon ARGS`` would; only the import cost is shared.

Usage (from a test)::

    python tests/cli_driver.py CASES.json RESULTS.json

``CASES.json``: ``[{"id": ..., "argv": [...], "cwd": ...}, ...]``; ``RESULTS.json``: per id the
exit status (``"timeout"`` when killed), stdout, stderr, wall seconds and the child's peak
resident memory (MiB).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

TIMEOUT_S = 60.0


def _child(argv: list[str], cwd: str, out_fd: int, err_fd: int) -> None:  # pragma: no cover - in the fork
    code = 1
    try:
        os.chdir(cwd)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        import torch

        torch.set_num_threads(1)
        from medrecon.cli.main import main

        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback is what the corpus looks for
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_one(argv: list[str], cwd: str, timeout: float = TIMEOUT_S) -> dict:
    """Fork, run ``medrecon *argv`` in ``cwd``, wait (kill after ``timeout`` s)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            _child(argv, cwd, out.fileno(), err.fileno())
        status, rusage, killed = None, None, False
        while True:
            wpid, st, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                status, rusage = st, ru
                break
            if time.monotonic() - t0 > timeout:
                os.kill(pid, 9)
                _, status, rusage = os.wait4(pid, 0)
                killed = True
                break
            time.sleep(0.01)
        out.seek(0)
        err.seek(0)
        if killed:
            rc = "timeout"
        elif os.WIFSIGNALED(status):
            rc = -os.WTERMSIG(status)
        else:
            rc = os.WEXITSTATUS(status)
        return {"rc": rc, "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace"),
                "seconds": round(time.monotonic() - t0, 3), "max_rss_mib": round(rusage.ru_maxrss / 1024, 1)}


def main(cases_path: str, results_path: str) -> None:
    os.environ.setdefault("COLUMNS", "200")
    import torch  # noqa: F401 - imported once, shared by every fork

    import medrecon.cli.main  # noqa: F401
    import medrecon.engine  # noqa: F401
    import medrecon.io  # noqa: F401

    cases = json.loads(open(cases_path).read())
    results = {c["id"]: run_one(c["argv"], c["cwd"], c.get("timeout", TIMEOUT_S)) for c in cases}
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
