"""A fake gunicorn for the front's tests: an h11 server that answers each request with JSON of what it got.

Run as a script (``python tests/support/fake_upstream.py``) it serves the unix socket named by
``IMGCLF_BIND=unix:PATH``, as gunicorn would behind the front; SIGHUP appends a line to ``$FAKE_HUP_FILE``,
SIGTERM exits 0, ``FAKE_DELAY_S`` delays every answer, and ``FAKE_EXIT_AFTER_S`` makes it exit by itself
with status 3.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import h11


class Echo:
    """Answer each request with JSON of its method, target, headers and body; remember them."""

    def __init__(self, close_after_each: bool = False) -> None:
        self.requests: list[dict] = []
        self.close_after_each = close_after_each  # as a restarted worker would: the pooled connection goes stale
        self.delay_s = float(os.environ.get("FAKE_DELAY_S", "0"))  # how long each answer takes

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        http = h11.Connection(h11.SERVER)
        try:
            while True:
                head, body = None, b""
                while True:
                    event = http.next_event()
                    if event is h11.NEED_DATA:
                        http.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Request):
                        head = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                seen = {"method": head.method.decode(), "target": head.target.decode(),
                        "body": body.decode(errors="replace"),
                        "headers": [[k.decode(), v.decode()] for k, v in head.headers], "pid": os.getpid()}
                self.requests.append(seen)
                await asyncio.sleep(self.delay_s)
                data = json.dumps(seen).encode()
                writer.write(http.send(h11.Response(status_code=200, headers=[
                    ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                    ("Server", "gunicorn")])) + http.send(h11.Data(data=data)) + http.send(h11.EndOfMessage()))
                await writer.drain()
                if self.close_after_each:
                    return
                http.start_next_cycle()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def _main() -> int:
    path = os.environ["IMGCLF_BIND"].removeprefix("unix:")
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)  # before listening: a signal after an answer finds them
    hup = os.environ.get("FAKE_HUP_FILE")
    if hup:
        loop.add_signal_handler(signal.SIGHUP, lambda: open(hup, "a").write("hup\n"))
    await asyncio.start_unix_server(Echo().handle, path)
    exit_after = float(os.environ.get("FAKE_EXIT_AFTER_S", "0"))
    if exit_after:
        await asyncio.sleep(exit_after)
        return 3
    await done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
