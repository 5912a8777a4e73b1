"""resource-stockpile: depots, items, the stock ledger and reservations of supplies for incidents."""
