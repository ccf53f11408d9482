"""A real server on the tiny model for the API test modules (their module-scoped fixtures)."""


def tiny_runtime(home, tiny_model_path, tiny_served, max_new_tokens: int):
    """A Runtime on the shared tiny model (base weights, no recall) in `home`."""
    from assistant.config import Config
    from assistant.runtime import Runtime

    tiny_served.use(None)
    return Runtime.create(Config(home=home, model=str(tiny_model_path), default_max_new_tokens=max_new_tokens),
                          model=tiny_served, with_memory=False)


def serving(runtime):
    """A real server on 127.0.0.1 (API and web page) for `runtime`, stopped afterwards (a generator
    for a module-scoped fixture to yield from)."""
    from assistant.server import start_server

    running = start_server(runtime)
    yield running
    running.stop()
