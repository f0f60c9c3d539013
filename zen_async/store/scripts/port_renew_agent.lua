-- port_renew_agent: extend every live lease that some agents of one tenant hold on one host
-- (their heartbeats). Leases already past their expiry are not revived (allocation and the
-- reaper reclaim them); index entries of ports no longer held by their holder are dropped.
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  new TTL in ms, counted from now
-- ARGV[2..]  holders: "<tenant>/<agent>"
--
-- Returns {new expiry (server ms), c_1, c_2, ...}: c_i the leases renewed for ARGV[1 + i].
-- Cost: O(k log n) for the agents' k leases.
-- idempotent: true (a resend extends the same leases again)
local exp, owner, byagent = KEYS[3], KEYS[4], KEYS[5]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = now + tonumber(ARGV[1])
local out = {renewed}
for i = 2, #ARGV do
  local holder = ARGV[i]
  local count = 0
  local members = redis.call("ZRANGEBYLEX", byagent, "[" .. holder .. "|", "(" .. holder .. "}")
  for _, member in ipairs(members) do
    local port = tonumber(string.sub(member, #holder + 2))
    local rec = redis.call("HGET", owner, port)
    local now_holder = rec and string.match(rec, "^%d+:(.*)$")
    if now_holder ~= holder then
      redis.call("ZREM", byagent, member)
    elseif tonumber(redis.call("ZSCORE", exp, port)) > now then
      redis.call("ZADD", exp, renewed, port)
      count = count + 1
    end
  end
  out[i] = count
end
return out
