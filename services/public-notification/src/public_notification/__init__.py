"""public-notification: CAP 1.2 alerts with two-person approval, official statements on the
release clocks, the rumor register and exercise isolation."""
