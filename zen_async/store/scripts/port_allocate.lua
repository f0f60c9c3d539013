-- port_allocate: lease the lowest free port of [start, end) on one host to one tenant's
-- agent, reclaiming expired leases of that host (of any tenant) first.
--
-- Every key belongs to one host, shared by all tenants, and has its hash tag
-- ("zen:hosts:{<host>}:..."):
-- KEYS[1]  free     ZSET of free intervals, member "<start>:<end>" (end exclusive), score start;
--                   covers the whole port space 1..65535 of the host, so any range is a window
--                   onto it (rebuilt from KEYS[2] when missing)
-- KEYS[2]  used     ZSET port -> port: every port leased or quarantined
-- KEYS[3]  exp      ZSET port -> expiry (server ms)
-- KEYS[4]  owner    HASH port -> "<token>:<tenant>/<agent>" ("<token>:" while quarantined)
-- KEYS[5]  byagent  ZSET score 0, member "<tenant>/<agent>|<port, 5 digits>": the per-holder
--                   index
-- KEYS[6]  quar     ZSET port -> port: ports quarantined (not bindable)
-- KEYS[7]  resv     ZSET port -> port: ports leased to outage reserves (port_reserve.py)
-- KEYS[8]  seq      STRING: the host's fencing-token counter
-- KEYS[9]  op       STRING: this call's operation id; holds the reply once done, so a resend
--                   after a lost reply returns the same lease instead of a second one
-- ARGV[1]  holder: "<tenant>/<agent>"
-- ARGV[2]  range start (inclusive)
-- ARGV[3]  range end (exclusive)
-- ARGV[4]  lease TTL in ms
-- ARGV[5]  at most this many expired leases are reclaimed first
-- ARGV[6]  host name (for messages)
-- ARGV[7]  TTL in ms of the operation-id key
-- ARGV[8]  "" for an agent's lease; for an outage reserve's, the most ports of the range
--          that all reserves together may hold (none is leased when they hold that many)
--
-- Returns {port, token, expiry ms, then port, token, holder of each lease reclaimed};
-- port 0 (nothing leased) when ARGV[8] is reached.
-- Errors: "CAPACITY ..." naming the range and how many of its ports are in use, in outage
-- reserves (and by how many processes) and quarantined.
-- Cost: O((1 + reclaimed) * log n), n = leases of the host; a refusal also reads the
-- reserves' ports of the range.
-- idempotent: true (guarded by the operation id in KEYS[9])
local free, used, exp, owner, byagent, quar, resv =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

local done = redis.call("GET", KEYS[9])
if done then
  local p, t, e = string.match(done, "^(%d+):(%d+):(%d+)$")
  return {tonumber(p), tonumber(t), tonumber(e)}
end

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

--@include port_intervals

local seq = KEYS[8]

--@include port_lease

local holder, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
ensure_free()

local reply = {0, 0, 0}
for _, v in ipairs(reclaim_expired(now, tonumber(ARGV[5]))) do
  reply[#reply + 1] = v
end

if ARGV[8] ~= "" and redis.call("ZCOUNT", resv, first, last - 1) >= tonumber(ARGV[8]) then
  return reply
end

local port = lowest_free(first, last)
if not port then
  return redis.error_reply("CAPACITY " .. exhausted(first, last, ARGV[6]))
end
local token, expiry = lease_port(port, holder, now, tonumber(ARGV[4]))
if ARGV[8] ~= "" then redis.call("ZADD", resv, port, port) end
redis.call("SET", KEYS[9], port .. ":" .. token .. ":" .. expiry, "PX", ARGV[7])
reply[1], reply[2], reply[3] = port, token, expiry
return reply
