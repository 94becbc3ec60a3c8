-- Sends the users KooDrive reported as failed once more: a new value of
-- koodrive.io/retry-failed (the time, as `kubectl annotate ... "$(date ...)"` would).
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["koodrive.io/retry-failed"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
