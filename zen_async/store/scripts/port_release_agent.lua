-- port_release_agent: end every lease one tenant's agent holds on one host.
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  holder: "<tenant>/<agent>"
--
-- Returns {port, token, port, token, ...} of the leases released.
-- Cost: O(k log n) for the agent's k leases.
-- idempotent: true (a resend finds nothing left to release)
local free, used, exp, owner, byagent, quar, resv =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

--@include port_intervals

local holder = ARGV[1]
local released = {}
local members = redis.call("ZRANGEBYLEX", byagent, "[" .. holder .. "|", "(" .. holder .. "}")
if #members > 0 then ensure_free() end
for _, member in ipairs(members) do
  local port = tonumber(string.sub(member, #holder + 2))
  redis.call("ZREM", byagent, member)
  local rec = redis.call("HGET", owner, port)
  local held, now_holder
  if rec then held, now_holder = string.match(rec, "^(%d+):(.*)$") end
  if now_holder == holder then
    drop(port)
    released[#released + 1] = port
    released[#released + 1] = tonumber(held)
  end
end
return released
