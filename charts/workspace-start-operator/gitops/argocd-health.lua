-- Argo CD health check for coder.com/WorkspaceStartRequest (workspace-start-operator).
-- Install: argocd-cm key resource.customizations.health.coder.com_WorkspaceStartRequest
-- (see argocd-cm.yaml beside this file; a test keeps both copies equal).
-- Written for Lua 5.1 (gopher-lua, the interpreter Argo CD embeds).
local hs = {}

local function findCondition(conditions, condType)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == condType then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return nil
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  elseif reason ~= "" then
    return reason
  elseif message ~= "" then
    return message
  end
  return nil
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the request"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if status.observedGeneration == nil or (generation ~= nil and status.observedGeneration ~= generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = findCondition(status.conditions, "Ready")
local stalled = findCondition(status.conditions, "Stalled")

if (stalled ~= nil and stalled.status == "True") or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(ready) or describe(stalled) or status.message or "Failed"
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready) or "Ready"
  return hs
end

hs.status = "Progressing"
local phase = status.phase or "Pending"
local progress = findCondition(status.conditions, "Reconciling") or ready
local detail
if progress ~= nil and progress.reason == phase and (progress.message or "") ~= "" then
  detail = progress.message
else
  detail = describe(progress) or status.message
end
if detail ~= nil then
  hs.message = phase .. ": " .. detail
else
  hs.message = phase
end
return hs
