"""gradwire.service: see the issue tracker; arrives with the service."""
