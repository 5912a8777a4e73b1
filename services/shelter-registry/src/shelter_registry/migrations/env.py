from ecs.migrations import run_env
from shelter_registry.store import metadata

run_env(metadata)
