"""Triage: the failure log in a database, known-fix lookup, a knowledge base, feedback, a service."""
