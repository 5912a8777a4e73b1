"""incident-intake: 110 gateway intake, alarm correlation and the incident lifecycle."""
