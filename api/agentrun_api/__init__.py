"""The AgentRun API: models (the single source of the CRD), constants and the operator-runner contract."""
