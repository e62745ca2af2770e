"""The live terminal view of a run (rich), or a line every few seconds when the output is not a terminal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from deploy.demo.timeline import Sample

__all__ = ["Progress"]


class Progress:
    """Shows the newest sample, the phase and the incidents in progress."""

    def __init__(
        self,
        console: Console,
        latest: Callable[[], Sample | None],
        phase: Callable[[], str],
        *,
        devices: int,
        duration_s: float,
    ) -> None:
        self.console = console
        self.latest = latest
        self.phase = phase
        self.devices = devices
        self.duration_s = duration_s

    def render(self) -> Panel:
        """The view of the current state."""
        sample = self.latest()
        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column(justify="right")
        if sample is None:
            return Panel(Text(f"{self.phase()} …"), title="keel demo")
        table.add_row(
            "ops written",
            f"{sample.written:,}",
            "devices online",
            f"{sample.online}/{self.devices} ({sample.connected} connected)",
        )
        table.add_row("acknowledged", f"{sample.acknowledged:,}", "device backlog", f"{sample.device_backlog:,}")
        table.add_row("projected", f"{sample.projected:,}", "projector backlog", f"{sample.projector_backlog:,}")
        table.add_row("conflicts resolved", f"{sample.conflicts:,}", "retries", f"{sample.retries:,}")
        incidents = ", ".join(sample.incidents) or "none"
        header = Text.assemble(
            (f"{self.phase()}", "bold"),
            f"  t={sample.t:5.1f}s / {self.duration_s:.0f}s   incident: ",
            (incidents, "bold red" if sample.incidents else "green"),
        )
        return Panel(Group(header, table), title="keel demo", border_style="cyan")

    def line(self) -> str:
        """The plain one-line form."""
        sample = self.latest()
        if sample is None:
            return f"[{self.phase()}]"
        return (
            f"[{self.phase()}] t={sample.t:.0f}s written={sample.written} acked={sample.acknowledged} "
            f"projected={sample.projected} online={sample.online}/{self.devices} "
            f"backlog={sample.device_backlog}+{sample.projector_backlog} conflicts={sample.conflicts} "
            f"retries={sample.retries} incident={','.join(sample.incidents) or '-'}"
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until `stop` is set."""
        if self.console.is_terminal:
            with Live(self.render(), console=self.console, refresh_per_second=4, transient=False) as live:
                while not stop.is_set():
                    live.update(self.render())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):  # not wait_for: it can swallow a cancel on 3.11
                            await stop.wait()
                live.update(self.render())
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):  # not wait_for: it can swallow a cancel on 3.11
                    await stop.wait()
            self.console.print(self.line(), highlight=False, markup=False, soft_wrap=True)
