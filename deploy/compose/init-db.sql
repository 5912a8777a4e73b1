-- Runs once, when the PostgreSQL volume is first created: one database per service.
-- Add a line here when a service joins docker-compose.yml.
CREATE DATABASE intake;
CREATE DATABASE dispatch;
CREATE DATABASE stockpile;
CREATE DATABASE shelter;
CREATE DATABASE notification;
