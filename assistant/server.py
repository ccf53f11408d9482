"""The web server: the OpenAI-compatible API under /v1 and the Gradio chat UI at "/".

`build_app(runtime)` assembles the FastAPI app; `start_server(runtime)` runs it with uvicorn in a
background thread (tests, benchmarks) and returns a `RunningServer`; `cmd_serve` is
`assistant serve`. The server binds to 127.0.0.1 by default; binding to any other address
requires both a UI password (ASSISTANT_UI_PASSWORD) and an API key (ASSISTANT_API_KEY).
"""
import logging
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from assistant.config import Config

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60


def build_app(runtime, ui: bool = True) -> FastAPI:
    """API routes first, then the UI mounted at "/" (a mount at "/" would shadow later routes).
    Without `assistant.ui` (or with ui=False) the API still serves."""
    from assistant.api import build_router, install_error_handlers  # imports torch: not for --help

    # /v1/docs and /v1/openapi.json are routes of the API router, behind its key.
    app = FastAPI(title="Personal assistant", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app, home=runtime.cfg.home)
    app.include_router(build_router(runtime))
    if ui:
        _mount_ui(app, runtime)
    return app


def _mount_ui(app: FastAPI, runtime) -> None:
    try:
        from assistant.ui import build_ui
    except ImportError as e:
        log.warning("web UI unavailable (%s); serving the API only", e)
        return
    import gradio

    password = runtime.cfg.ui_password
    # Any user name; the password is what guards the page, so guessing it is slowed down.
    # As bytes: compare_digest refuses str with non-ASCII characters (a 500 for a guess like "é").
    auth = (lambda _user, given: secrets.compare_digest((given or "").encode(), password.encode())) \
        if password else None
    if auth:
        from assistant.login_limit import LoginLimit

        app.add_middleware(LoginLimit)
    options = dict(getattr(sys.modules["assistant.ui"], "MOUNT_OPTIONS", {}))  # css, theme, head...
    gradio.mount_gradio_app(app, build_ui(runtime), path="/", auth=auth,
                            auth_message="Enter the assistant's password." if auth else None, **options)
    from assistant.api import install_unknown_path_errors

    install_unknown_path_errors(app.routes[-1].app)  # the Gradio app just mounted at "/"


@dataclass
class RunningServer:
    """A uvicorn server running in a daemon thread."""
    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int
    stop_watch: object = None  # stops the adapter watcher (preloads promoted versions)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.stop_watch is not None:
            self.stop_watch()


def start_server(runtime, host: str = "127.0.0.1", port: int = 0, ui: bool = True) -> RunningServer:
    """Start serving `build_app(runtime)` and return once the socket accepts connections.
    port=0 picks a free port (see `.port`)."""
    if runtime.memory is not None:
        runtime.memory.warm()  # MiniLM and the recall index load meanwhile, not in the first turn
    config = uvicorn.Config(build_app(runtime, ui=ui), host=host, port=port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server failed to start on {host}:{port} (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(server=server, thread=thread, host=host, port=bound,
                         stop_watch=runtime.chat.watch_adapters())


def check_exposure(cfg: Config) -> str | None:
    """Why serving on cfg.host is not allowed, or None when it is."""
    if cfg.is_loopback():
        return None
    missing = [name for name, value in (("ASSISTANT_UI_PASSWORD", cfg.ui_password),
                                        ("ASSISTANT_API_KEY", cfg.api_key)) if not value]
    if not missing:
        return None
    return (f"Refusing to serve on {cfg.host}: other machines could reach it. Set "
            f"{' and '.join(missing)} (a password for the web UI and a key for the API), "
            "or serve on 127.0.0.1.")


def cmd_serve(cfg: Config, args) -> int:
    """`assistant serve [--host H] [--port P]`: load the model, serve until Ctrl-C / SIGTERM."""
    cfg.host, cfg.port = args.host, args.port
    refusal = check_exposure(cfg)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    if not _port_free(cfg.host, cfg.port):
        print(f"Port {cfg.port} on {cfg.host} is in use: pick another with --port.", file=sys.stderr)
        return 2
    import torch

    from assistant.runtime import Runtime
    from assistant.threads import ThreadBudget

    torch.set_num_threads(cfg.chat_threads)  # explicit: a learning cycle beside it has its own budget
    print(f"Loading the model ({cfg.model}); the first run converts the embedded model once...",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    runtime = Runtime.create(cfg)
    runtime.chat.threads = ThreadBudget(cfg)
    print(f"Model ready in {time.perf_counter() - started:.1f} s; database {cfg.db_path}",
          file=sys.stderr, flush=True)
    running = start_server(runtime, host=cfg.host, port=cfg.port)
    trigger = _start_auto_trigger(cfg)
    print(f"Serving the assistant at {running.url}  (API: {running.url}/v1)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set() and running.thread.is_alive():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    print("Stopping...", file=sys.stderr, flush=True)
    if trigger is not None:
        trigger.stop()
    running.stop()
    return 0


def _start_auto_trigger(cfg: Config):
    """Learning starts by itself when enough feedback accumulates (helper module; optional)."""
    try:
        from learning.control import AutoTrigger
    except ImportError as e:
        log.warning("automatic learning unavailable: %s", e)
        return None
    trigger = AutoTrigger(cfg)
    trigger.start()
    return trigger


def _port_free(host: str, port: int) -> bool:
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
