"""Everything that talks to RabbitMQ's own tools."""

# Provisioning defaults, here so that the CLI can show them without importing provision.
DEFAULT_USER = "celery"
DEFAULT_VHOST = "celery"
DEFAULT_PERMISSION = ".*"
