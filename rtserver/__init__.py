"""Real-time fMRI neurofeedback server for drug-versus-food cue reactivity.

Layers, lowest first (``docs/architecture.md``; import-linter checks them):

- shared definitions: :mod:`~rtserver.errors`, :mod:`~rtserver.protocol` (the wire
  protocol), :mod:`~rtserver.volume`, :mod:`~rtserver.rigid`, :mod:`~rtserver.paradigm`,
  :mod:`~rtserver.config`, :mod:`~rtserver.bids`;
- :mod:`rtserver.core` -- ``Pipeline.step(volume) -> FeedbackEvent`` and its stages, no I/O;
- :mod:`rtserver.resources` -- the atlases and template shipped in the package;
- :mod:`rtserver.scanner` -- readers of every scanner format, assembly, folder watching;
- :mod:`rtserver.service` -- session setup, server, bridge, replay, recording;
  :mod:`rtserver.sim` -- the ground-truth simulator (beside the service, never below it);
- :mod:`rtserver.train` -- decoder training;
- :mod:`rtserver.cli`, :mod:`rtserver.demo` -- the ``rtserver`` command and the demo.
"""

__version__ = "0.1.0"
