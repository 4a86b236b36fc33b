"""What every resolver gets as `info.context`: the service, the event hub, per-request loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from schema.dataloaders import Loaders

if TYPE_CHECKING:
    from checkmate.access import Principal
    from checkmate.events import EventHub
    from checkmate.service import CheckMateService


@dataclass
class GraphQLContext:
    service: CheckMateService
    hub: EventHub | None
    request_id: str
    # The starlette Request / WebSocket and the response strawberry hands to get_context.
    request: Any = None
    response: Any = None
    loaders: Loaders = field(init=False)
    # A websocket context lives as long as the connection: caching loads there would serve
    # stale tasks to later events, so such contexts batch without caching.
    cache_loads: bool = True
    # Who is calling (schema.access): set from the Authorization header over HTTP, from the
    # connection_init payload on websockets. None: nobody, every guarded field is refused.
    principal: Principal | None = None
    # strawberry puts a websocket's connection_init payload here.
    connection_params: Any = None
    # The websocket protocol handler serving this context (ends it on revocation).
    ws_handler: Any = None

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.service, cache=self.cache_loads)
