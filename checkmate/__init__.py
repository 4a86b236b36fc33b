"""CheckMate: operate pipeline tasks at scale."""

from checkmate.models import CheckMateTask, CheckMateTaskBatchResult, StageStatus
from checkmate.service import CheckMateService, ServiceError, service_context
from checkmate.tasks import StageContext, TaskKind, task_kind

__all__ = [
    "CheckMateService",
    "CheckMateTask",
    "CheckMateTaskBatchResult",
    "ServiceError",
    "StageContext",
    "StageStatus",
    "TaskKind",
    "service_context",
    "task_kind",
]
