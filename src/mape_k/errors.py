"""The one exception tree of mape-k. Every error we raise on purpose is a MapekError.

    MapekError
    ├── ConfigError                 bad file / env / CLI value; names the path and the source
    ├── PrometheusError             .query holds the PromQL
    │   ├── PrometheusUnavailable   connect error, refused, 5xx
    │   ├── PrometheusTimeout       client or server-side timeout
    │   ├── PrometheusQueryError    `status: error` body: .error_type, .error
    │   └── PrometheusResponseError a body we cannot read
    ├── CharterError                .operation, .status, .message
    │   ├── CharterUnavailable      connect error, timeout, 5xx after retries, circuit open
    │   └── CharterRequestError     4xx: the request was wrong, never retried
    │       └── CharterNotFound     404: unknown policy, fault, ...
    ├── StoreError
    │   ├── StoreCorruptError       not a SQLite file / integrity check failed
    │   └── StoreSchemaError        written by a newer mape-k
    └── ExecutionError              an action failed or timed out inside the Executor
        └── ActuatorError           a user-defined action's actuator failed: .operation, .status
            ├── ActuatorUnavailable connect error, timeout, 5xx after retries
            │   └── ActuatorTimeout no answer in time (it may or may not have taken effect)
            └── ActuatorRejected    an unexpected status, a non-zero exit code

httpx / aiohttp / sqlite3 exceptions never leave the module that caught them: they are
re-raised as one of these with `raise ... from exc`.
"""

from __future__ import annotations


class MapekError(Exception):
    """Base of every error mape-k raises on purpose."""


class ConfigError(MapekError):
    """A configuration value is missing, unknown or invalid."""


class PrometheusError(MapekError):
    def __init__(self, message: str, *, query: str = "") -> None:
        self.query = query
        super().__init__(f"{message} (query: {query})" if query else message)


class PrometheusUnavailable(PrometheusError):
    """Prometheus could not be reached or answered 5xx."""


class PrometheusTimeout(PrometheusError):
    """The query timed out, in the client or inside Prometheus."""


class PrometheusQueryError(PrometheusError):
    def __init__(self, *, error_type: str, error: str, query: str = "") -> None:
        self.error_type = error_type
        self.error = error
        super().__init__(f"prometheus {error_type}: {error}", query=query)


class PrometheusResponseError(PrometheusError):
    """Prometheus answered with something that is not its API envelope."""


class _CallError(MapekError):
    """An error of one call to something outside: which operation, and the HTTP status."""

    def __init__(self, message: str, *, operation: str = "", status: int | None = None) -> None:
        self.operation = operation
        self.status = status
        self.message = message
        where = f"{operation}: " if operation else ""
        code = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{where}{message}{code}")


class CharterError(_CallError):
    """The Charter API did not do what was asked."""


class CharterUnavailable(CharterError):
    """The Charter API cannot be reached right now (worth retrying later)."""


class CharterTimeout(CharterUnavailable):
    """A Charter call got no answer in time (the call may or may not have taken effect)."""


class CharterRequestError(CharterError):
    """The Charter API refused the request (4xx); retrying will not help."""


class CharterNotFound(CharterRequestError):
    """The thing asked for does not exist."""


class StoreError(MapekError):
    """The knowledge store cannot be used."""


class StoreCorruptError(StoreError):
    """The knowledge file is not a SQLite database or fails its integrity check."""


class StoreSchemaError(StoreError):
    """The knowledge file was written by a newer mape-k (or an unknown schema)."""


class StaleEpochError(StoreError):
    """A fenced write carried a leader epoch the shared store no longer holds: the lease
    lapsed (a paused, partitioned or slow replica) or another replica took it over."""


class ExecutionError(MapekError):
    """An action failed or timed out."""


class ActuatorError(_CallError, ExecutionError):
    """A user-defined action's actuator (exec, http, alertmanager) failed."""


class ActuatorUnavailable(ActuatorError):
    """The actuator's endpoint cannot be reached right now."""


class ActuatorTimeout(ActuatorUnavailable):
    """No answer in time: the action may or may not have taken effect."""


class ActuatorRejected(ActuatorError):
    """The endpoint or the program said no (an unexpected status, a failing exit code)."""
