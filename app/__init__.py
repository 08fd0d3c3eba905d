"""The application: configuration, REST routes, auth and services."""
