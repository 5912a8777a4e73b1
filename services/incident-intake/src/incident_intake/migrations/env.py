from ecs.migrations import run_env
from incident_intake.store import metadata

run_env(metadata)
