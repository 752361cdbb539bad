"""Native media work: discovery, metadata stripping, conversion, video remux/transcode.

Everything here runs outside the server process: exiftool (one long-lived ``-stay_open``
process), ffprobe/ffmpeg (one process per call, video only), and the libvips engine (a pool
of long-lived worker processes). All of it is reached through ``MediaTools``, which
``open_media_tools`` starts and supervises inside the caller's nursery. What a file is
(``Discovery``) and what ingest makes of it (``Plan``) are pure records in
``rules.policy``.
"""
