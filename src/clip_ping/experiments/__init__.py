"""The experiments built on the library: the demo corpus, the demo, the results page, run
reports and contact sheets. The library never imports this package (only ``cli.py`` does).

- :mod:`.demo_corpus` (with :mod:`.emoji` and :mod:`.clipart`): ``clip-ping data demo``
- :mod:`.demo`: ``clip-ping demo``, CLIP vs CLIP-PING end to end
- :mod:`.results`: ``clip-ping results``, seeds and ablations → ``docs/results.md``
- :mod:`.sweep`, :mod:`.curve`: the sweeps on val and the data-efficiency curve
- :mod:`.commands`: the CLI of these commands
- :mod:`.report`: ``clip-ping report``, a table and figures comparing finished runs
- :mod:`.contact_sheet`: ``clip-ping bank show``, neighbours at a glance
"""
