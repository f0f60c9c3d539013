-- port_leases: the live leases one agent holds on one host (read only).
--
-- KEYS[1..6]  free, used, exp, owner, byagent, quar of the host (see port_allocate.lua)
-- ARGV[1]  agent id
--
-- Returns {port, token, expiry ms, ...}, by port; expired leases are left out.
-- idempotent: true
local exp, owner, byagent = KEYS[3], KEYS[4], KEYS[5]
local agent = ARGV[1]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reply = {}
local members = redis.call("ZRANGEBYLEX", byagent, "[" .. agent .. "|", "(" .. agent .. "}")
for _, member in ipairs(members) do
  local port = tonumber(string.sub(member, #agent + 2))
  local rec = redis.call("HGET", owner, port)
  local held, holder
  if rec then held, holder = string.match(rec, "^(%d+):(.*)$") end
  local expiry = tonumber(redis.call("ZSCORE", exp, port) or "0")
  if holder == agent and expiry > now then
    reply[#reply + 1] = port
    reply[#reply + 1] = tonumber(held)
    reply[#reply + 1] = expiry
  end
end
return reply
