-- Releases what is in doubt once (the users of unanswered requests are sent again, and
-- DELETEs KooDrive did not confirm are sent again): a new value of
-- koodrive.io/resubmit-in-doubt. Use it only after checking with KooDrive.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["koodrive.io/resubmit-in-doubt"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
