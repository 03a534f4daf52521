-- Argo CD health check for agentrun.dev/AgentRun (argocd-cm key resource.customizations.health.agentrun.dev_AgentRun).
-- Argo CD sets the global `obj` to the live AgentRun and expects a table {status = ..., message = ...}.
--   no status yet, Pending, Running, or a spec change not yet observed -> Progressing
--   Suspended, WaitingForApproval (paused until a person decides)       -> Suspended
--   Succeeded                                                           -> Healthy
--   Failed, TimedOut, Cancelled                                         -> Degraded
-- Cancelled is Degraded: the run ended without its result, as Argo CD treats an aborted Rollout or a stopped
-- Workflow; delete or replace the AgentRun to clear it.
local health = {}
local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  health.status = "Progressing"
  health.message = "Waiting for the operator to accept the run"
  return health
end

local phase = status.phase
local message = status.message
if message == nil or message == "" then
  message = phase
  if status.reason ~= nil and status.reason ~= "" then
    message = phase .. ": " .. status.reason
  end
end
health.message = message

local generation = obj.metadata.generation
local observed = status.observedGeneration
local ended = phase == "Succeeded" or phase == "Failed" or phase == "TimedOut" or phase == "Cancelled"
if not ended and generation ~= nil and observed ~= nil and observed < generation then
  health.status = "Progressing"
  health.message = "The operator has not yet acted on the latest spec change (" .. message .. ")"
  return health
end

if phase == "Succeeded" then
  health.status = "Healthy"
elseif phase == "Failed" or phase == "TimedOut" or phase == "Cancelled" then
  health.status = "Degraded"
elseif phase == "Suspended" or phase == "WaitingForApproval" then
  health.status = "Suspended"
else
  -- Pending, Running, and any phase a newer operator may add.
  health.status = "Progressing"
end
return health
