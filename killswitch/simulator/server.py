"""Serve a :class:`Simulator` over real HTTP on loopback (plus the admin calls)."""

from __future__ import annotations

from types import TracebackType

from killswitch.simulator.admin import ADMIN_PREFIX, handle_admin
from killswitch.simulator.core import Reply, Request, Simulator
from killswitch.simulator.http import HttpServer


class SimulatorServer:
    """An HTTP listener in front of a Simulator; use as ``async with``.

    ``admin=False`` turns the unsigned ``/_admin/`` calls off (404).
    """

    def __init__(
        self, sim: Simulator, host: str = "127.0.0.1", port: int = 0, *, admin: bool = True
    ) -> None:
        self.sim = sim
        self.host = host
        self._admin = admin
        self._http = HttpServer(self._answer, host, port)
        self._started = False

    def _answer(self, request: Request) -> Reply:
        if request.path.startswith(ADMIN_PREFIX) and self._admin:
            return handle_admin(self.sim, request.method, request.path, request.query, request.body)
        return self.sim.handle(request)

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        return self._http.port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, what an account's ``base_url`` should be."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> SimulatorServer:
        """Bind and start serving."""
        if not self._started:
            await self._http.start()
            self._started = True
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._started:
            self._started = False
            await self._http.close()

    async def __aenter__(self) -> SimulatorServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
