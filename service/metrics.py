"""(being written) Prometheus metrics."""


def init_app(app) -> None:
    """Install the request hooks and the /metrics route."""


def batch_observer(model: str):
    """Return a callback(images, seconds) recording one model call of ``model``."""
    return None


def observe_load(model: str, seconds: float) -> None:
    """Record how long loading and warming up ``model`` took."""
