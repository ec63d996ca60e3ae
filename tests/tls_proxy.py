"""A TLS-terminating TCP proxy for tests (Tansu speaks no TLS): clients handshake with it as
with a Kafka broker's SSL listener, and it forwards the plain bytes to the broker. It runs on
its own thread and event loop, so worker subprocesses and in-process clients can both use it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading


class TlsProxy:
    def __init__(self, listen_port: int, target_port: int, context: ssl.SSLContext) -> None:
        self.listen_port, self.target_port, self.context = listen_port, target_port, context
        self.handshakes = 0  # completed TLS sessions (the test checks TLS was really used)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._handle, "127.0.0.1", self.listen_port, ssl=self.context), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
