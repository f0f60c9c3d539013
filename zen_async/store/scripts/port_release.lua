-- port_release: end one lease and return its port to the free intervals.
--
-- KEYS[1..6]  free, used, exp, owner, byagent, quar of the host (see port_allocate.lua)
-- ARGV[1]  agent id
-- ARGV[2]  port
-- ARGV[3]  fencing token of the lease, or "" to release whatever lease the agent holds on
--          the port (the seed's unfenced release_port)
-- ARGV[4]  host name (for messages)
--
-- Returns the token of the lease released, or 0 when the port was not leased (with "" as
-- token: not leased to this agent).
-- Errors: "CONFLICT ..." naming the port when it was reissued under another token.
-- Not idempotent: a resend after a lost reply would report 0 or a conflict.
local free, used, exp, owner, byagent, quar = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

--@include port_intervals

local agent, port, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local rec = redis.call("HGET", owner, port)
if not rec then return 0 end
local held, holder = string.match(rec, "^(%d+):(.*)$")
if token == "" then
  if holder ~= agent then return 0 end
elseif held ~= token or holder ~= agent then
  local now_holder = holder == "" and "quarantined" or ("agent " .. holder)
  return redis.error_reply("CONFLICT port " .. port .. " on host " .. ARGV[4] ..
    " was reissued: the lease of agent " .. agent .. " (token " .. token ..
    ") expired or was released, and the port is now held by " .. now_holder .. " with token " ..
    held)
end
ensure_free()
redis.call("ZREM", exp, port)
redis.call("ZREM", used, port)
redis.call("HDEL", owner, port)
redis.call("ZREM", byagent, agent .. "|" .. string.format("%05d", port))
give_back(port)
return tonumber(held)
