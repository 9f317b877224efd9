"""Shared foundations every layer may use: errors, crash-safe files, metrics, downloads."""
