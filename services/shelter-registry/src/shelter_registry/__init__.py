"""shelter-registry: shelters, capacity, evacuee registrations, reunification search."""
