"""Request bodies: their JSON shapes, each turned into the command it carries.

Pydantic checks types here; every rule and limit is checked once, by the command's
constructor (`actors.commands`, `actors.namespace_settings`). Responses render in
`actors.render`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from actors.commands import Completion, JobSpec, ProgressUpdate
from actors.limits import DEFAULT_SECRET_GRACE_S
from actors.namespace_settings import UNSET, NamespaceChanges, WebhookSettings
from serve_app.durations import DateTime, Duration, to_epoch
from serve_app.errors import invalid_body
from storage.records import OutputFormat

#: Numbers as JSON numbers only: no `"50"` for 50, no `true` for 1 (pydantic's lax mode
#: would take both). Dates and enums stay lax: JSON carries them as strings.
Int = Annotated[int, Strict()]
Number = Annotated[float, Strict()]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metadata(_Body):
    title: str | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)


class RetentionPolicy(_Body):
    #: Whole seconds (`serve_app.durations.parse_duration_s`).
    ttl: Duration


class SubmitRequest(_Body):
    namespace: str | None = None
    job_id: str | None = Field(default=None, alias="jobId")
    metadata: Metadata = Field(default_factory=Metadata)
    webhook_url: str | None = Field(default=None, alias="webhookUrl")
    webhook_events: list[str] | None = Field(default=None, alias="webhookEvents")
    retention_policy: RetentionPolicy | None = Field(default=None, alias="retentionPolicy")
    output_format: OutputFormat = Field(default=OutputFormat.TEXT, alias="outputFormat")

    @classmethod
    def parse(cls, value: object) -> SubmitRequest:
        """`value` (JSON, parsed) checked as one job of a batch submit: `Invalid` with the
        message the submit endpoint gives for such a body."""
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            raise invalid_body(exc.errors(), subject="a job") from exc

    def spec(self) -> JobSpec:
        return JobSpec(
            title=self.metadata.title,
            description=self.metadata.description,
            tags=tuple(self.metadata.tags),
            webhook_url=self.webhook_url,
            webhook_events=tuple(self.webhook_events) if self.webhook_events is not None else None,
            ttl_s=self.retention_policy.ttl if self.retention_policy else None,
            output_format=self.output_format,
        )


class ProgressPatch(_Body):
    progress: Number | None = None
    estimated_completion: DateTime | None = Field(default=None, alias="estimatedCompletion")

    def update(self) -> ProgressUpdate:
        estimated = self.estimated_completion
        return ProgressUpdate(
            self.progress, to_epoch("estimatedCompletion", estimated) if estimated else None
        )


class CompleteRequest(_Body):
    status: str
    error: str | None = None

    def completion(self) -> Completion:
        return Completion.parse(self.status, self.error)


class RetrySettings(_Body):
    initial_delay_ms: Int | None = Field(default=None, alias="initialDelayMs")
    max_delay_ms: Int | None = Field(default=None, alias="maxDelayMs")
    max_attempts: Int | None = Field(default=None, alias="maxAttempts")


class WebhookSettingsBody(_Body):
    url: str | None = None
    events: list[str] | None = None
    timeout_ms: Int | None = Field(default=None, alias="timeoutMs")
    retry: RetrySettings | None = None

    def settings(self) -> WebhookSettings:
        retry = self.retry or RetrySettings()
        return WebhookSettings(
            url=self.url,
            events=tuple(self.events) if self.events is not None else None,
            timeout_ms=self.timeout_ms,
            initial_delay_ms=retry.initial_delay_ms,
            max_delay_ms=retry.max_delay_ms,
            max_attempts=retry.max_attempts,
        )


class NamespaceConfig(_Body):
    description: str | None = None
    retention: RetentionPolicy | None = None
    webhooks: WebhookSettingsBody | None = None

    def changes(self) -> NamespaceChanges:
        """Only the fields the body names change; `null` clears one."""
        given = self.model_fields_set
        retention, webhooks = self.retention, self.webhooks
        return NamespaceChanges(
            description=self.description if "description" in given else UNSET,
            retention_ttl_s=(retention.ttl if retention else None)
            if "retention" in given
            else UNSET,
            webhooks=(webhooks.settings() if webhooks else None) if "webhooks" in given else UNSET,
        )


class NamespaceCreate(NamespaceConfig):
    name: str


class SecretRotation(_Body):
    grace_s: Number = Field(default=DEFAULT_SECRET_GRACE_S, alias="graceS")


class KeyCreate(_Body):
    description: str | None = None
