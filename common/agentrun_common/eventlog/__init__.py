"""The run's event log as the runner stores it and the stream gateway replays it.

The runner writes; the gateway reads a run whose runner is gone. Both run this code, so a replay serves exactly
what the runner would: the ``Event`` and its SSE framing (``events``), the checkpoint record frame and its uid
binding (``records``), the ConfigMap segment layout (``segments``) and the ended run's archive (``archive``).
"""
