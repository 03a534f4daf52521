"""Whether a run's stream lasts through every hop between a reader and its runner: the verdict the
operator records as the ``StreamChainFits`` condition, and the Warning Event that shows the chain.

The controller in front of the stream gateway is the cluster's (the operator's setting, from the
chart's ``gateway.controller``); a run that asks for its own exposure (``spec.streaming.ingress``)
names its own. The chain is computed for the run's budget exactly as ``kubectl agentrun budget`` prints it.
"""

from dataclasses import dataclass
from typing import Final

from agentrun_api import conditions as c
from agentrun_api.spec import AgentRunSpec, IngressController
from agentrun_common.stream_timeouts.budget import StreamBudget
from agentrun_common.stream_timeouts.chain import Hop, HopStatus, format_chain_table
from agentrun_common.stream_timeouts.controllers import stream_chain

# The longest Event message, in bytes: the Events API (events.k8s.io/v1) rejects a note above 1 KiB
# (NoteLengthLimit in Kubernetes' event validation), and kopf cuts core/v1 messages at 1024 characters.
EVENT_MESSAGE_LIMIT: Final = 1024
_CUT_MARK: Final = "..."


def controller_for(spec: AgentRunSpec, cluster_controller: IngressController) -> IngressController:
    """The run's own exposure names its controller; every other run is read through the cluster's route."""
    return spec.streaming.ingress.controller if spec.streaming.ingress is not None else cluster_controller


@dataclass(frozen=True)
class StreamChainCheck:
    """The chain of timers on one run's stream path and what it means for the run."""

    run: str
    controller: IngressController
    hops: tuple[Hop, ...]

    @property
    def cutting_hops(self) -> tuple[Hop, ...]:
        """Hops whose timer ends the stream before the run ends (WARN)."""
        return tuple(h for h in self.hops if h.status is HopStatus.WARN)

    @property
    def fits(self) -> bool:
        return not self.cutting_hops

    @property
    def reason(self) -> str:
        return c.REASON_STREAM_CHAIN_FITS if self.fits else c.REASON_STREAM_HOP_CUTS

    def condition_message(self) -> str:
        """One line per cutting hop, or why the chain fits; the full table is `kubectl agentrun budget`'s."""
        if self.fits:
            return f"behind {self.controller}, every timer on the stream path lets one stream last the whole run"
        cuts = "; ".join(f"{h.hop}: {h.setting}: {h.note}" for h in self.cutting_hops)
        return (
            f"behind {self.controller}, {len(self.cutting_hops)} hop(s) cut the stream before the run ends; "
            f"readers resume with Last-Event-ID. {cuts}"
        )

    def event_message(self, limit: int = EVENT_MESSAGE_LIMIT) -> str:
        """The chain as a table inside ``limit`` bytes: every hop if they fit, else the cutting hops."""
        head = (
            f"stream path of {self.run} behind {self.controller}: a timer cuts the stream before the run ends "
            "(readers resume with Last-Event-ID)\n"
        )
        full = head + format_chain_table(list(self.hops), compact=True)
        if _size(full) <= limit:
            return full.rstrip("\n")
        hidden = len(self.hops) - len(self.cutting_hops)
        tail = f"{hidden} more hop(s) not shown; `kubectl agentrun budget {self.run}` prints them all"
        short = head + format_chain_table(list(self.cutting_hops), compact=True) + tail
        if _size(short) <= limit:
            return short
        return short.encode()[: limit - len(_CUT_MARK)].decode(errors="ignore") + _CUT_MARK


def _size(text: str) -> int:
    return len(text.encode())


def check_stream_chain(run: str, spec: AgentRunSpec, cluster_controller: IngressController) -> StreamChainCheck | None:
    """The run's chain behind its controller; None when the run serves no stream."""
    if not spec.streaming.enabled:
        return None
    controller = controller_for(spec, cluster_controller)
    return StreamChainCheck(run, controller, tuple(stream_chain(controller, StreamBudget.from_spec(spec))))
