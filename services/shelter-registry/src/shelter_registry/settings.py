from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ecs.settings import ServiceSettings


class ShelterSettings(ServiceSettings):
    """shelter-registry's settings, from SHELTER_* environment variables (times in seconds)."""

    model_config = SettingsConfigDict(env_prefix="SHELTER_", extra="ignore")

    service_name: str = "shelter-registry"
    database_url: str = "sqlite:///var/data/shelter-registry.db"
    http_port: int = 8004

    # GB 21734-2008 §5.4: more than 1.5 m² of living area a person; a shelter's capacity is its
    # effective area over this, unless an operator sets it lower.
    m2_per_person: float = Field(default=1.5, ge=1.5, le=20.0)
    # The key of the fingerprints ID and phone numbers are stored (and searched) as. Set your own.
    pii_key: str = Field(default="change-me-shelter-pii-key-at-least-32-bytes", min_length=16)
    # Reunification searches one caller may make in a window, across replicas (then 429).
    search_limit: int = Field(default=10, ge=1, le=10000)
    search_window_s: float = Field(default=60.0, gt=0, le=86400)
    # Reunification records of a closed incident are kept this long, then purged.
    retention_days: int = Field(default=90, ge=1, le=3650)
    retention_sweep_s: float = Field(default=3600.0, gt=0, le=86400)
    # Evacuation automation: open the nearest standby shelters when an incident enters isolation
    # (or its level rises) with evacuation in its plan, until the expected evacuees fit. Before an
    # operator corrects it, the estimate is the plan's evacuation circle (pi r²) times this density
    # in people a km² (4,000: about Shanghai's average, 24.9 million people on 6,341 km² in the 2020
    # census; the central districts are far denser, Huangpu about 32,000). Without a radius (no
    # plan answered yet) the estimate is default_expected_evacuees.
    automatic: bool = True
    evacuation_density_per_km2: float = Field(default=4000.0, ge=0, le=100_000)
    default_expected_evacuees: int = Field(default=500, ge=0, le=1_000_000)
    incident_batch: int = Field(default=50, ge=1, le=500)
    # PFIF 1.4 export: the domain in its record ids (<domain>/person.<...>) and its source_name,
    # and the author its notes name. Give the domain your organisation controls.
    pfif_domain: str = Field(
        default="shelter-registry.ecs.local",
        pattern=r"^[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$",
    )
    pfif_author: str = Field(default="Emergency shelter registry", min_length=1, max_length=100)
