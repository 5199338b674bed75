"""Turning provider SDK exceptions into `ModelError` with the right retry decision."""

from __future__ import annotations

from ..errors import ModelError

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
_HINTS = {
    400: "the request was rejected; check the model's options (max tokens, temperature) and the prompt size",
    401: "the API key was refused; check {key_var}",
    403: "the API key may not use this model; check {key_var} and the model name",
    404: "the model or endpoint was not found; check the model name and base URL",
    413: "the prompt is too large for this model",
    422: "the request was rejected as invalid; check the model's options",
}


def parse_retry_after(headers) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header; None when absent or unreadable."""
    if headers is None:
        return None
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return float(millis) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None  # an HTTP date: rare; fall back to backoff


def from_status(provider: str, model: str, status: int, detail: str, headers=None, key_var: str = "") -> ModelError:
    hint = _HINTS.get(status, "").format(key_var=key_var or "the API key")
    retryable = status in RETRYABLE_STATUS or status >= 500
    message = f"{provider} {model}: HTTP {status}: {detail[:300]}" + (f" ({hint})" if hint else "")
    return ModelError(message, retryable=retryable, retry_after=parse_retry_after(headers) if retryable else None,
                      status_code=status)


def timed_out(provider: str, model: str) -> ModelError:
    return ModelError(f"{provider} {model}: the request timed out", retryable=True)


def connection_failed(provider: str, model: str, cause: object) -> ModelError:
    """A failed connection is retried, except a certificate that is not trusted: that fails the same
    way every time, and the message says where trusted authorities come from (models/tls.py)."""
    from .tls import is_certificate_error

    if isinstance(cause, BaseException) and is_certificate_error(cause):
        return ModelError(f"{provider} {model}: the server's certificate is not trusted ({cause}): install its "
                          f"certificate authority in the system's trust store, or set SSL_CERT_FILE or "
                          f"REQUESTS_CA_BUNDLE to a PEM bundle that holds it", retryable=False)
    return ModelError(f"{provider} {model}: connection failed ({cause})", retryable=True)


def from_sdk_error(error: Exception, sdk, provider: str, model: str, key_var: str) -> ModelError:
    """Map an exception of the `openai` or `anthropic` SDK (LiteLLM's errors subclass openai's).

    Both SDKs share these class names, so one mapping serves both; `sdk` is the imported module.
    """
    if isinstance(error, sdk.APITimeoutError):
        return timed_out(provider, model)
    if isinstance(error, sdk.APIConnectionError):
        return connection_failed(provider, model, error.__cause__ or error)
    if isinstance(error, sdk.APIStatusError):
        response = getattr(error, "response", None)
        return from_status(provider, model, error.status_code, getattr(error, "message", str(error)),
                           getattr(response, "headers", None), key_var)
    if isinstance(error, (sdk.APIResponseValidationError, ValueError)):
        return ModelError(f"{provider} {model}: malformed response ({error})", retryable=True)
    return ModelError(f"{provider} {model}: {type(error).__name__}: {error}", retryable=False)


def from_openai_error(error: Exception, provider: str, model: str, key_var: str) -> ModelError:
    import openai

    return from_sdk_error(error, openai, provider, model, key_var)
