-- port_reclaim: return the ports of expired leases (of any tenant) and of ended quarantines
-- on one host to the free intervals. Called by allocation implicitly and by
-- PortAllocator.reclaim_expired explicitly.
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  at most this many ports per call (the caller loops while the batch is full)
--
-- Returns {port, token, holder, ...} of each port reclaimed (holder "" for a quarantine).
-- Cost: O(k log n) for k ports reclaimed.
-- idempotent: true (a resend finds nothing more to reclaim)
local free, used, exp, owner, byagent, quar, resv =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

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
  local token, holder = drop(port)
  reply[#reply + 1] = port
  reply[#reply + 1] = token
  reply[#reply + 1] = holder
end
return reply
