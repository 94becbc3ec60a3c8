-- Confirms the change the deletion guard holds back: koodrive.io/confirm-deletions set to
-- the exact number of users it deletes (status.deletionsToConfirm). The operator removes
-- the annotation once it has acted on it.
if obj.status == nil or obj.status.deletionsToConfirm == nil then
  return obj
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["koodrive.io/confirm-deletions"] = tostring(obj.status.deletionsToConfirm)
return obj
