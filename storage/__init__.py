"""gradwire.storage: see the issue tracker; arrives with the service."""
