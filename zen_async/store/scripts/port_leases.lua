-- port_leases: the live leases one tenant's agent holds on one host (read only).
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  holder: "<tenant>/<agent>"
--
-- Returns {port, token, expiry ms, ...}, by port; expired leases are left out.
-- idempotent: true
local exp, owner, byagent = KEYS[3], KEYS[4], KEYS[5]
local holder = ARGV[1]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reply = {}
local members = redis.call("ZRANGEBYLEX", byagent, "[" .. holder .. "|", "(" .. holder .. "}")
for _, member in ipairs(members) do
  local port = tonumber(string.sub(member, #holder + 2))
  local rec = redis.call("HGET", owner, port)
  local held, now_holder
  if rec then held, now_holder = string.match(rec, "^(%d+):(.*)$") end
  local expiry = tonumber(redis.call("ZSCORE", exp, port) or "0")
  if now_holder == holder and expiry > now then
    reply[#reply + 1] = port
    reply[#reply + 1] = tonumber(held)
    reply[#reply + 1] = expiry
  end
end
return reply
