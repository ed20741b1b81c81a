"""Models: builders, the real Wan2.1 loader, spec-only models, weights and training recipes.

``zoo`` (a seeded tiny Wan for tests, the shared prompt-token encoder), ``real`` (Wan2.1 /
Self-Forcing from local files), ``specmodel`` (a real model's sizes without weights),
``weights`` (the search path of weight folders), ``recipes`` (the ``rollbench train`` registry),
``trainer`` (the one training loop; a recipe is hooks over it).
"""
