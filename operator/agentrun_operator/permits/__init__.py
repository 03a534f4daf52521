"""Cluster-wide throttle pools: the operator grants every model call of every run in a pool a permit.

Semantics across an operator restart (permit state lives in the operator's memory only):

- Leases are short (``AGENTRUN_PERMIT_LEASE_SECONDS``, default 15 s) and renewed by the runner every
  third of that while its call runs. A runner killed while holding a permit stops renewing, and the
  permit returns to the pool one lease period later: nothing leaks.
- Fail closed for one lease period: a pool grants nothing during its first lease period after the
  operator starts (or after the ThrottlePool is declared). Runners holding permits from before the
  restart renew them within that period and the server adopts them, so when grants resume the
  in-flight count is the true one and the concurrency limit holds across the restart. A lease not
  renewed by then is gone; its holder is told (404) if it tries later.
- The rate buckets start empty, so at most ``burst + rpm x T / 60`` calls start in any window of T
  seconds, restart or not.
- Queue order survives: a client whose long-poll broke re-queues the same request id with the
  seconds it has already waited; the server places it at ``now - waited`` in arrival order, so
  calls keep their first-come place. Fair-queuing credit between runs starts afresh.
- A runner that cannot reach the permit server never calls the model unthrottled: it retries
  within its queue budget, then fails with ThrottleQueueTimeout saying the server was unreachable.

A pool's rate adapts to provider 429s (``pool.Aimd``); like the rest of its state, the adapted rate
lives in memory and starts again at the declared rate after a restart.

Modules: ``pool`` (the scheduling and the adaptive rate, clock-injected), ``server`` (HTTP),
``credentials`` (who may ask), ``access`` (who may use a ClusterThrottlePool), ``settings``,
``metrics``, ``handlers`` (kopf handlers for ThrottlePool and ClusterThrottlePool, imported by the
operator).
"""
