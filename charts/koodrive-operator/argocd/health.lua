-- Argo CD health check for koodrive.io/UserBatch (resource.customizations.health.koodrive.io_UserBatch).
-- Maps the operator's kstatus-style conditions (Ready, Reconciling, Stalled) to Argo CD health.
local hs = {}

local function condition(conditions, conditionType)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local function messageOf(c)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return nil
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
-- Status written for an older spec says nothing about the current one.
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local ready = condition(status.conditions, "Ready")
local stalled = condition(status.conditions, "Stalled")
local reconciling = condition(status.conditions, "Reconciling")

-- Paused on purpose (spec.suspend): Argo CD's own word for it.
if reconciling ~= nil and reconciling.reason == "Suspended" then
  hs.status = "Suspended"
  if ready ~= nil and ready.status ~= "True" then
    hs.message = messageOf(ready) or messageOf(reconciling) or "Suspended"
  else
    hs.message = messageOf(reconciling) or "Suspended"
  end
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = messageOf(ready) or "Ready"
  return hs
end

-- Stalled: the operator cannot progress without a human (rejected, users failed, in doubt,
-- deletions held by the guard).
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = messageOf(ready) or messageOf(stalled) or "Stalled"
  return hs
end

hs.status = "Progressing"
hs.message = messageOf(ready) or "Waiting for the operator"
return hs
