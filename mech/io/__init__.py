"""Plumbing every stage shares: files written atomically (`atomic`) and run status with
provenance (`provenance`). Nothing here knows about models."""
