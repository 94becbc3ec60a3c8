-- Argo CD resource actions for koodrive.io/UserBatch
-- (resource.customizations.actions.koodrive.io_UserBatch): each one sets the annotation a
-- human would set with kubectl, and is offered only when the status says it can help.
local actions = {}
actions["retry-failed"] = {["disabled"] = true, ["iconClass"] = "fa fa-fw fa-redo"}
actions["resubmit-in-doubt"] = {["disabled"] = true, ["iconClass"] = "fa fa-fw fa-paper-plane"}
actions["confirm-deletions"] = {["disabled"] = true, ["iconClass"] = "fa fa-fw fa-user-times"}

local status = obj.status
if status == nil then
  return actions
end

-- Users recorded as failed (the ones koodrive.io/retry-failed sends again).
if status.users ~= nil then
  for _, user in ipairs(status.users) do
    if user.state == "Failed" then
      actions["retry-failed"]["disabled"] = false
    elseif user.state == "Deleting" then
      actions["resubmit-in-doubt"]["disabled"] = false
    end
  end
end

-- A request or a DELETE whose outcome is unknown.
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" and (c.reason == "SubmissionInDoubt" or c.reason == "DeletionInDoubt") then
      actions["resubmit-in-doubt"]["disabled"] = false
    end
  end
end

-- A change held by the deletion guard: confirming names its exact count.
if status.deletionsToConfirm ~= nil and status.deletionsToConfirm > 0 then
  actions["confirm-deletions"]["disabled"] = false
end
return actions
