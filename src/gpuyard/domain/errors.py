"""The one error hierarchy of gpuyard. Every error a person can hit says what happened and what to do."""

from __future__ import annotations


class GpuyardError(Exception):
    """Base of every gpuyard error. `code` is the stable machine-readable name."""

    code = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidJobSpec(GpuyardError):
    code = "invalid_job_spec"


class InvalidWebhook(GpuyardError):
    code = "invalid_webhook"


class WebhookNotFound(GpuyardError):
    code = "webhook_not_found"


class DeadLetterNotFound(GpuyardError):
    code = "dead_letter_not_found"


class JobNotFound(GpuyardError):
    code = "job_not_found"

    def __init__(self, job_id: int) -> None:
        super().__init__(f"No job {job_id} exists. List your jobs with `gpuyard ps` or `gpuyard history`.")
        self.job_id = job_id


class InvalidTransition(GpuyardError):
    code = "invalid_transition"


class NotAuthenticated(GpuyardError):
    code = "not_authenticated"


class PermissionDenied(GpuyardError):
    code = "permission_denied"


class UserExists(GpuyardError):
    code = "user_exists"


class QuotaExceeded(GpuyardError):
    """A per-user limit (e.g. jobs waiting at once) refuses a request."""

    code = "quota_exceeded"


class NoNodeFits(GpuyardError):
    """A job asks for more GPUs than any node has: it could never start, so it is refused."""

    code = "no_node_fits"


class BrokerUnavailable(GpuyardError):
    code = "broker_unavailable"


class ConfigurationError(GpuyardError):
    code = "configuration_error"
