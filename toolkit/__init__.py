"""rollbench's harness: model protocol, rollout loop, positions, cache base classes, world."""
