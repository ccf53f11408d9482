"""Wrong passwords at the web page's login are limited per client: after `max_failures` within
`window_s` seconds, that client's logins (right or wrong) get 429 until the oldest of those
failures is `window_s` old. Without it a script tried 30 passwords in 0.1 s and the right one
was then accepted. An ASGI middleware around the app, because Gradio's /login route calls our
password check without saying who is asking."""
import json
import time
from collections import deque

LOGIN_PATHS = ("/login", "/login/")  # Gradio's login form posts here (the UI is mounted at "/")


class LoginLimit:
    def __init__(self, app, max_failures: int = 5, window_s: float = 60.0, clock=time.monotonic):
        self.app, self.max_failures, self.window_s, self.clock = app, max_failures, window_s, clock
        self.failures: dict[str, deque] = {}  # client address -> times of its recent failures

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again (0: now)."""
        now = self.clock()
        for who in list(self.failures):  # forget failures older than the window
            times = self.failures[who]
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if not times:
                del self.failures[who]
        times = self.failures.get(client)
        if not times or len(times) < self.max_failures:
            return 0.0
        return self.window_s - (now - times[0])

    def record(self, client: str, accepted: bool) -> None:
        if accepted:
            self.failures.pop(client, None)
        else:
            self.failures.setdefault(client, deque()).append(self.clock())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in LOGIN_PATHS:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.retry_after(client)
        if wait > 0:
            return await _too_many(send, wait)
        status = 0

        async def watching_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watching_send)
        if status in (200, 400):  # Gradio: 200 logged in, 400 "Incorrect credentials."
            self.record(client, accepted=status == 200)


async def _too_many(send, wait: float) -> None:
    seconds = max(1, round(wait))
    body = json.dumps({"detail": f"Too many wrong passwords from this address: try again in {seconds} s."})
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", str(seconds).encode())]})
    await send({"type": "http.response.body", "body": body.encode()})
