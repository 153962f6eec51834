"""DatabricksFilesHook.cancel() runs from on_kill, i.e. inside the SIGTERM handler on the main thread,
which may be anywhere at that moment, even inside the hook's own bookkeeping around a transfer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from airflow_databricks_transfer.hooks.files import DatabricksFilesHook
from tests.integration.conftest import REPO


class FakeTransfer:
    """Records cancel(); stands in for an Uploader/Downloader (the hook only registers and cancels it)."""

    def __init__(self) -> None:
        self.cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1


# The realistic overlap: execution_timeout makes the task runner call on_kill() on the main thread; while
# that cancel() is inside the transfer's cancel(), SIGTERM arrives (the task is also being killed) and
# the SIGTERM handler calls on_kill() -> cancel() again, on the same thread. The transfer here raises the
# signal itself, so the overlap is certain. A lock taken by cancel() deadlocks the process right there.
NESTED = textwrap.dedent(
    """
    import signal
    from airflow_databricks_transfer.hooks.files import DatabricksFilesHook

    class Transfer:
        calls = 0

        def cancel(self):
            Transfer.calls += 1
            if Transfer.calls == 1:
                signal.raise_signal(signal.SIGTERM)  # handled before this method returns

    hook = DatabricksFilesHook("unused")
    signal.signal(signal.SIGTERM, lambda signum, frame: hook.cancel())  # what _on_term -> on_kill does
    with hook._running(Transfer()):
        hook.cancel()  # on_kill after AirflowTaskTimeout
    print("cancel calls", Transfer.calls)
    """
)


def test_cancel_from_the_sigterm_handler_while_the_main_thread_is_cancelling() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NESTED],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,  # a deadlock shows up as TimeoutExpired
        check=True,
    )
    assert proc.stdout.split()[-1] == "2"  # both cancels reached the transfer, the nested one first


def test_a_cancel_before_the_transfer_registers_is_not_lost() -> None:
    hook = DatabricksFilesHook("unused")
    hook.cancel()  # on_kill arrives between "operator started" and "transfer registered"
    transfer = FakeTransfer()
    with hook._running(transfer):
        pass
    assert transfer.cancelled == 1


def test_cancel_reaches_the_running_transfer() -> None:
    hook = DatabricksFilesHook("unused")
    transfer = FakeTransfer()
    with hook._running(transfer):
        hook.cancel()
        assert transfer.cancelled == 1
    hook.cancel()  # after the transfer: nothing to reach, and no error
    assert transfer.cancelled == 1
