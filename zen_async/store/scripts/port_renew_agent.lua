-- port_renew_agent: extend every live lease one agent holds on one host (the agent's
-- heartbeat). Leases already past their expiry are not revived (allocation and the reaper
-- reclaim them); index entries of ports no longer held by the agent are dropped.
--
-- KEYS[1..6]  free, used, exp, owner, byagent, quar of the host (see port_allocate.lua)
-- ARGV[1]  agent id
-- ARGV[2]  new TTL in ms, counted from now
--
-- Returns {leases renewed, new expiry (server ms)}.
-- Cost: O(k log n) for the agent's k leases.
-- idempotent: true (a resend extends the same leases again)
local exp, owner, byagent = KEYS[3], KEYS[4], KEYS[5]
local agent = ARGV[1]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = now + tonumber(ARGV[2])
local count = 0
local members = redis.call("ZRANGEBYLEX", byagent, "[" .. agent .. "|", "(" .. agent .. "}")
for _, member in ipairs(members) do
  local port = tonumber(string.sub(member, #agent + 2))
  local rec = redis.call("HGET", owner, port)
  local holder = rec and string.match(rec, "^%d+:(.*)$")
  if holder ~= agent then
    redis.call("ZREM", byagent, member)
  elseif tonumber(redis.call("ZSCORE", exp, port)) > now then
    redis.call("ZADD", exp, renewed, port)
    count = count + 1
  end
end
return {count, renewed}
