from dispatch.store import metadata
from ecs.migrations import run_env

run_env(metadata)
