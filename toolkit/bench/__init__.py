"""Benches: what a strategy costs, measured beside the floor it is compared with.

``kv`` (``rollbench memory``: KV bytes and the KV path's working memory at a real model's scale,
on meta tensors), ``allocations`` (live tensor bytes counted op by op), ``throughput`` (ms per
block beside a plain loop of the model's linear layers), ``realsize`` (the real-size GPU bench).
"""
