"""celeryctl: set up and run Celery on RabbitMQ with one command-line tool."""

__version__ = "0.1.0"
