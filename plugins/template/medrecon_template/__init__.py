"""A minimal third-party medrecon plugin (see docs/plugins.md)."""
