"""The compare-strategies report, a pure function of stored runs (``rollbench report``).

``data`` reads the tracking store, ``tables`` and ``figures`` compute the sections,
``sections`` holds them (and the provenance footer), ``render`` writes HTML and Markdown, and
``compare`` ties them together behind the command.
"""
