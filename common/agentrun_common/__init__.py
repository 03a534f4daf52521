"""What the operator, the runner and the stream gateway share at run time.

One Kubernetes client, one SSE codec, one duration parser, one retry policy and one settings loader, imported
by all three processes; and the event log's stored format (``eventlog``), which the runner writes and the
stream gateway replays. It depends only on what every image already has (aiohttp, pydantic), so each image
keeps its own dependencies.
"""
