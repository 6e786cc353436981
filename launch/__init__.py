"""The top layer: console entry points and launchers that join packages that must not import each other.

- ``launch.cli``: ``hydra-compress`` (the core's local commands and the client's service commands);
- ``launch.service_cli``: ``hydra-service`` (migrate, keys, serve, worker, demo);
- ``launch.embedded``: the embedded launcher behind ``hydra-service serve`` (API + worker + reaper);
- ``launch.demo``: the end-to-end demo behind ``hydra-service demo``, with its spec as package data.

Only this package may import both ``api`` and ``worker``; ``service`` (settings, database, storage)
imports neither, nor this package (tests/test_layering.py keeps the rules).
"""
