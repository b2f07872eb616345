"""The `xorweights` command, killed (`os._exit(9)`) right after its Nth rename of a finished output
into its final name: after that `os.replace` returns, before the run records it (the instant a
crash tests the commit protocol hardest).

    python tests/die_after_rename.py N decode PAYLOAD --base BASE --out OUT ...

(or `python -m tests.die_after_rename N ...` from the checkout; `command` builds the line.)

Counted renames: a job's temporary `.xorweights-NAME.RANDOM.part` (in the output folder's
`.cache/huggingface/xorweights/`, or in the staging folder of a staged run) into `NAME`, and a staged
file into its final name (out of `.xorweights-staging/`). Not counted: the folder's own records
(hidden `.xorweights-*` names, such as the state file and a recovery's seal), and the manifests
written once the outputs are in place (`xorweights.json`, `xorweights-tensors.json`). A file the
command writes after its run under a name of the user's (`encode --manifest PATH`, `checksums
--output PATH`) does count: a count past the run's outputs kills the process there (the tests kill
runs at one of their outputs).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the checkout, not tests/

from xorweights.formats.native_manifest import MANIFEST_NAME  # noqa: E402
from xorweights.outfolder.atomic import STAGING_DIR, TEMP_PREFIX, TEMP_SUFFIX  # noqa: E402
from xorweights.tensor_manifest import TENSORS_NAME  # noqa: E402

_CLI = ("-m", "xorweights.cli")


def command(n: int, cmd: Sequence[str]) -> list[str]:
    """`cmd` (`python -m xorweights.cli ARGS...`) as a command line dying after its `n`th rename."""
    assert list(cmd[:3]) == [sys.executable, *_CLI], cmd
    return [sys.executable, str(Path(__file__).resolve()), str(n), *cmd[3:]]


def counted(src: Any, dst: Any) -> bool:
    """Whether renaming `src` to `dst` puts a finished output under its final name."""
    src, dst = Path(os.fsdecode(src)), Path(os.fsdecode(dst))
    if dst.name.startswith(TEMP_PREFIX) or dst.name in (MANIFEST_NAME, TENSORS_NAME):
        return False
    made = src.name.startswith(f"{TEMP_PREFIX}{dst.name}.") and src.name.endswith(TEMP_SUFFIX)
    published = STAGING_DIR in src.parts and STAGING_DIR not in dst.parts
    return made or published


def die_after(n: int) -> None:
    """Make `os.replace` end the process right after the `n`th counted rename."""
    replace, lock, done = os.replace, threading.Lock(), [0]

    def dying_replace(src: Any, dst: Any, **fds: Any) -> None:
        replace(src, dst, **fds)
        if counted(src, dst):
            with lock:
                done[0] += 1
                if done[0] >= n:
                    os._exit(9)

    os.replace = dying_replace


if __name__ == "__main__":
    die_after(int(sys.argv[1]))
    sys.argv = ["xorweights", *sys.argv[2:]]
    from xorweights.cli import main

    main()
