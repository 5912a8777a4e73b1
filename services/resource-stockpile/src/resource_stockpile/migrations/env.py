from ecs.migrations import run_env
from resource_stockpile.store import metadata

run_env(metadata)
