"""Provenance and audit: manifest, protection report and tracking sinks."""
