"""Media-forwarding core of the SFU: encoded frames in, encoded frames out, no decoding.

Public API (see each module for details):

* :class:`MediaRoom`, :class:`MediaConfig` - per-room registry of publishers and viewers.
* :func:`handle_publish_offer`, :func:`create_subscribe_offer`,
  :func:`handle_subscribe_answer`, :func:`handle_subscribe_offer` - SDP signaling.
* :class:`MediaError` (``.code``), :class:`MediaLimitError` - refusals for the protocol.
* :func:`check_compatible` - call at startup; raises if aiortc internals changed.
* :func:`use_loopback_candidates` / :func:`loopback_candidates` - ICE on 127.0.0.1 only.

The node's side of media sits beside the core: `gateway.py` assembles it from `site.py` (rooms
and who is in them), `publishing.py`, `ws_signaling.py`, `sessions.py` (WHIP/WHEP), `edges.py`
and `relay.py` (an edge's pull from the origin), `failover.py` and `claim.py` (which node holds a
room's media), `sampler.py` (stats); `ice.py` (ICE servers, TURN credentials), `metrics.py` (the
core's counters).
"""

from . import metrics as _metrics  # noqa: F401 - registers the counters' collector
from .errors import MediaError, MediaLimitError
from .fanout import ForwardedTrack
from .forward import COUNTERS, AiortcCompatibilityError, check_compatible
from .loopback import loopback_candidates, use_loopback_candidates
from .room import MediaConfig, MediaRoom, Publication, Subscription
from .signaling import (
    create_subscribe_offer,
    handle_publish_offer,
    handle_subscribe_answer,
    handle_subscribe_offer,
)

__all__ = [
    "COUNTERS",
    "AiortcCompatibilityError",
    "ForwardedTrack",
    "MediaConfig",
    "MediaError",
    "MediaLimitError",
    "MediaRoom",
    "Publication",
    "Subscription",
    "check_compatible",
    "create_subscribe_offer",
    "handle_publish_offer",
    "handle_subscribe_answer",
    "handle_subscribe_offer",
    "loopback_candidates",
    "use_loopback_candidates",
]
