"""Datasets (the registry of ``dataset.name`` loaders, in ``datasets``) and fair evaluation samples
(seeded, class-stratified, in ``sampling``). See CONTRIBUTING.md, "Adding a dataset"."""
