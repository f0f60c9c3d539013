-- port_stats: occupancy of one port range on one host, over every tenant (read only,
-- O(log n)).
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  range start (inclusive)
-- ARGV[2]  range end (exclusive)
--
-- Returns {ports of the range in use (leased or quarantined), of those quarantined,
--          ports of the host held, of those past expiry and awaiting reclaim,
--          ports of the range held in outage reserves}.
-- idempotent: true
local used, exp, quar, resv = KEYS[2], KEYS[3], KEYS[6], KEYS[7]
local first, last = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {
  redis.call("ZCOUNT", used, first, last - 1),
  redis.call("ZCOUNT", quar, first, last - 1),
  redis.call("ZCARD", used),
  redis.call("ZCOUNT", exp, "-inf", now),
  redis.call("ZCOUNT", resv, first, last - 1),
}
