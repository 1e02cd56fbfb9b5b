"""Tables, metrics and figures for people and trackers (pandas, matplotlib): the pipeline side of
the library's numbers. ``certification``: certified-accuracy tables, curves, metrics and plot;
``reconstruction``: the DMAE reconstruction figure."""
