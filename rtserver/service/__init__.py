"""The I/O shells around the core: session setup, server, bridge, replay, recording.

:mod:`~rtserver.service.session` loads every file a run needs and builds the pipeline;
:mod:`~rtserver.service.server` receives volumes, steps the pipeline and publishes feedback;
:mod:`~rtserver.service.bridge` sends volumes and resends until acknowledged;
:mod:`~rtserver.service.replay` runs both in one process; :mod:`~rtserver.service.recording`
writes the run; :mod:`~rtserver.service.model_file` reads and writes decoder files.

May import: the core, the scanner layer, :mod:`rtserver.resources` and the shared
definitions. Never the simulator, training or the display.
"""
