"""`jdarts` with a slow checkpoint write, for the fault-injection tests.

    python tests/fault_runner.py search --config=... --workdir=...

Runs `jdarts.cli.main` after making every checkpoint item write sleep
JDARTS_TEST_SAVE_DELAY seconds (default 0) inside orbax's write, i.e. while
the step's `*.orbax-checkpoint-tmp` directory exists and is incomplete, so
that a SIGKILL at a random moment often lands in the write window.
"""
import os
import sys
import time

import orbax.checkpoint as ocp

from jdarts import cli


def _slow(cls):
  orig = cls.async_save
  delay = float(os.environ.get("JDARTS_TEST_SAVE_DELAY", "0"))

  async def async_save(self, *args, **kwargs):
    time.sleep(delay)  # blocks the writer: the temporary directory stays incomplete
    return await orig(self, *args, **kwargs)

  cls.async_save = async_save


if __name__ == "__main__":
  _slow(ocp.JsonCheckpointHandler)
  sys.exit(cli.main(sys.argv[1:]))
