"""Decisions: control-plane aggregates and data-plane admission. No Kafka, HTTP or SQL."""
