"""Training a subject's decoder, and regenerating the demo decoder.

:mod:`~rtserver.train.training` runs localizer runs through the same
:class:`~rtserver.core.pipeline.Pipeline` as a live session and cross-validates;
:mod:`~rtserver.train.demo_model` trains the decoder the demo ships. May import every
layer below it (service, simulator, scanner, core, shared definitions); nothing but the
command line and the demo imports it.
"""
