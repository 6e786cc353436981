"""Architectures: the registry (``create_model``, ``list_models``, ``register_model``) and the zoo.

Every architecture is a function registered by name in ``core.models.zoo``; ``torchvision:<name>``
builds any torchvision classifier. See CONTRIBUTING.md, "Adding an architecture".
"""
