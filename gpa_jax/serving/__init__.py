"""Serving the trained chain: inputs -> requests (`inputs`), the HTTP server (`server`).

Import the modules themselves (`from gpa_jax.serving import server`); nothing is
imported here, so the lighter parts load without the server's web dependencies.
"""
