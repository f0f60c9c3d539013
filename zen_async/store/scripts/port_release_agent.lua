-- port_release_agent: end every lease one agent holds on one host.
--
-- KEYS[1..6]  free, used, exp, owner, byagent, quar of the host (see port_allocate.lua)
-- ARGV[1]  agent id
--
-- Returns {port, token, port, token, ...} of the leases released.
-- Cost: O(k log n) for the agent's k leases.
-- idempotent: true (a resend finds nothing left to release)
local free, used, exp, owner, byagent, quar = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

--@include port_intervals

local agent = ARGV[1]
local released = {}
local members = redis.call("ZRANGEBYLEX", byagent, "[" .. agent .. "|", "(" .. agent .. "}")
if #members > 0 then ensure_free() end
for _, member in ipairs(members) do
  local port = tonumber(string.sub(member, #agent + 2))
  redis.call("ZREM", byagent, member)
  local rec = redis.call("HGET", owner, port)
  local held, holder
  if rec then held, holder = string.match(rec, "^(%d+):(.*)$") end
  if holder == agent then
    redis.call("ZREM", exp, port)
    redis.call("ZREM", used, port)
    redis.call("HDEL", owner, port)
    give_back(port)
    released[#released + 1] = port
    released[#released + 1] = tonumber(held)
  end
end
return released
