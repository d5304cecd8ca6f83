"""gradwire.client: see the issue tracker; arrives with the service."""
