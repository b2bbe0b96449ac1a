"""The response shapes, as the OpenAPI document describes them (the story's, and `status --json`'s)."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class BulkJobOut(BaseModel):
    """A bulk job as `status --json` shows it (its fields: model.BulkJob's, checked by tests/test_fields.py)."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    mode: str
    status: str
    userId: str
    total_items: int
    completed_items: int
    failed_items: int
    cancelled_items: int
    created_at: Optional[str]
    started_at: Optional[str]
    completed_at: Optional[str]
    estimated_completion: Optional[str]
    error_summary: list[str]
    priority: str
    not_before: Optional[str]
    group_id: Optional[str]
    quality: Optional[str] = Field(None, description="the quality gate's policy: warn, fail or retry")
    quality_ratio: Optional[float] = None
    flagged_items: Optional[int] = None
    turned_down_items: Optional[int] = Field(None, description="failed items whose article the quality gate "
                                                                "turned down")
    quality_summary: Optional[list[str]] = None
    notified_at: Optional[str] = None


class ProgressOut(BaseModel):
    total: int
    completed: int
    failed: int
    cancelled: int
    remaining: int
    percentage: int


class ItemOut(BaseModel):
    """One item as `status --json` shows it; the mode's main field (topic, keywords, trend, source_…) beside.

    Its fields: model.Item's, checked by tests/test_fields.py."""

    model_config = ConfigDict(extra="allow")

    id: str
    item_id: Optional[str]
    queue_position: int
    status: str
    retry_count: int
    attempts: int
    error: Optional[str]
    verdict: Optional[dict[str, object]] = Field(None, description="the quality gate's verdict, once checked")
    topic: Optional[str] = None
    keywords: Optional[list[str]] = None
    trend: Optional[str] = None
    source_text: Optional[str] = None
    source_url: Optional[str] = None


class NotificationOut(BaseModel):
    channel: str
    state: str
    attempts: int
    last_error: Optional[str]
    sent_at: Optional[str]


class StatusOut(BaseModel):
    """`GET /api/bulk-generate/{id}`: the story's {bulk_job, jobs, progress}, as `status --json`."""

    bulk_job: BulkJobOut
    progress: ProgressOut
    jobs: list[ItemOut]
    notifications: list[NotificationOut]


class SubmitOut(BaseModel):
    """The story's answer to a submit."""

    success: bool
    bulk_job_id: str
    total_items: int
    message: str
    status: str
    created: bool = Field(..., description="false when the Idempotency-Key was used before: nothing new stored")


class ControlOut(BaseModel):
    success: bool
    message: str
    changed: bool = Field(..., description="false when the action already held (a no-op)")
    previous: str
    bulk_job: BulkJobOut
    progress: ProgressOut


class ItemRecordOut(ItemOut):
    """One item with its article, as `bulkgen show ITEM --json`."""

    short_id: str
    bulk_job_id: str
    bulk_job_name: str
    userId: str
    mode: str
    article: dict[str, object]
    created_at: Optional[str]
    started_at: Optional[str]
    completed_at: Optional[str]
    request_seconds: Optional[float]
    waited_seconds: Optional[float]
    front_matter: dict[str, object]
    text: Optional[str] = Field(..., description="the article's text as stored; null until it completed")


class ItemControlOut(BaseModel):
    success: bool
    message: str
    changed: bool = Field(..., description="false when the action already held (a no-op)")
    previous: str
    item: ItemRecordOut
    bulk_job: BulkJobOut
    progress: ProgressOut


class TemplateOut(BaseModel):
    """A saved template, as `bulkgen template list --json` shows it (`text` only for one template)."""

    name: str
    mode: Optional[str]
    placeholders: list[str]
    source: str
    created_at: Optional[str]
    updated_at: Optional[str]
    text: Optional[str] = None


class TemplateIn(BaseModel):
    text: str = Field(..., max_length=1024 * 1024, description="the template file's text (YAML or JSON)")
    replace: bool = Field(False, description="replace a template of that name (else 409)")


class DoneOut(BaseModel):
    success: bool
    message: str


class ScheduleOut(BaseModel):
    """A schedule as `bulkgen schedule list --json` shows it."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    userId: str
    cron: str
    zone: str
    status: str
    created_at: Optional[str]
    next_run: Optional[str]
    next_run_local: Optional[str]
    source: dict[str, object]
    job: dict[str, object]
    last_run: Optional[dict[str, object]]
    skipped: dict[str, object]


class ScheduleStateOut(BaseModel):
    success: bool
    message: str
    changed: bool
    schedule: ScheduleOut


class TokenUserOut(BaseModel):
    user: str
    admin: bool
    email: Optional[str]


class BulkConfigIn(BaseModel):
    """The articles as an articles file holds them (docs/files.md, "Articles files"), checked exactly as a file is."""

    model_config = ConfigDict(extra="forbid")

    mode: Optional[str] = Field(None, description="topic (the default), keywords, trends or spin")
    name: Optional[str] = Field(None, description="the job's name")
    defaults: Optional[dict[str, object]] = Field(None, description="fields every item gets unless it sets its own")
    items: list[dict[str, object]] = Field(
        ..., description="10 to 50 articles, each with its mode's field (topic, keywords, trend, source_text or "
                         "source_url) and optional word_count, tone, language, title, audience, id, instructions")


class SubmitIn(BaseModel):
    """A JSON submit: the articles as in an articles file (the story's bulk_config), and the submit options."""

    model_config = ConfigDict(extra="allow")

    bulk_config: Optional[BulkConfigIn] = Field(
        None, description="{mode, name, defaults, items}: validated exactly as an articles file")
    mode: Optional[str] = Field(None, description="the story's form: {mode, items} at the top level")
    items: Optional[list[object]] = None
    name: Optional[str] = None
    priority: Optional[str] = Field(None, description="high, normal or low: the order of your own jobs (users take "
                                                      "turns); urgent, an admin's only, goes ahead of everyone's")
    not_before: Optional[str] = Field(None, description="ISO 8601 with a zone, or +30m, +2h, +1d")
    notify: Optional[Union[list[str], str]] = Field(None, description="webhook:https://… or email:…")
    template: Optional[str] = Field(None, description="a saved template's name; `values` are its rows")
    values: Optional[list[dict[str, object]]] = Field(None, description="the rows that fill `template`")


class ScheduleIn(SubmitIn):
    """A schedule: its name, cron and zone, and what each run submits (as `POST /api/bulk-generate` takes it)."""

    schedule: str = Field(..., description="the schedule's name")
    cron: str = Field(..., description="five fields, as crontab: 0 6 * * MON")
    zone: str = Field(..., description="an IANA zone: Europe/Berlin")
