-- port_reclaim: return the ports of expired leases (and of ended quarantines) on one host to
-- the free intervals. Called by allocation implicitly and by the agents reaper explicitly.
--
-- KEYS[1..6]  free, used, exp, owner, byagent, quar of the host (see port_allocate.lua)
-- ARGV[1]  at most this many ports per call (the caller loops while the batch is full)
--
-- Returns {port, token, agent, ...} of each port reclaimed (agent "" for a quarantine).
-- Cost: O(k log n) for k ports reclaimed.
-- idempotent: true (a resend finds nothing more to reclaim)
local free, used, exp, owner, byagent, quar = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

--@include port_intervals

local reply = {}
local expired = redis.call("ZRANGEBYSCORE", exp, "-inf", now_ms(), "LIMIT", 0, tonumber(ARGV[1]))
if #expired > 0 then ensure_free() end
for _, p in ipairs(expired) do
  local port = tonumber(p)
  local rec = redis.call("HGET", owner, port)
  local token, agent = "0", ""
  if rec then token, agent = string.match(rec, "^(%d+):(.*)$") end
  redis.call("ZREM", exp, port)
  redis.call("ZREM", used, port)
  redis.call("ZREM", quar, port)
  redis.call("HDEL", owner, port)
  if agent ~= "" then
    redis.call("ZREM", byagent, agent .. "|" .. string.format("%05d", port))
  end
  give_back(port)
  reply[#reply + 1] = port
  reply[#reply + 1] = tonumber(token)
  reply[#reply + 1] = agent
end
return reply
