"""The scanner layer: read what a scanner writes, and turn it into volumes.

:mod:`~rtserver.scanner.readers` reads any one file of an export folder as pieces of
volumes, :mod:`~rtserver.scanner.assembly` assembles pieces into volumes in acquisition
order, :mod:`~rtserver.scanner.watch` follows a live export folder,
:mod:`~rtserver.scanner.sources` opens a recorded export or run for replay, and
:mod:`~rtserver.scanner.export_writer` writes a series into a folder the way a scanner does
(for tests and benchmarks).
"""
