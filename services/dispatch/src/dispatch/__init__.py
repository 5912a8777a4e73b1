"""dispatch: units, response plans, recommendation, race-free assignment and automatic dispatch."""
