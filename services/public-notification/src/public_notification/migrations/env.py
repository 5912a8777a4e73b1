from ecs.migrations import run_env
from public_notification.store import metadata

run_env(metadata)
