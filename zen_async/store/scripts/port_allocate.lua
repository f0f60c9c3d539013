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

local holder, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
ensure_free()

local reply = {0, 0, 0}
for _, p in ipairs(redis.call("ZRANGEBYSCORE", exp, "-inf", now, "LIMIT", 0, tonumber(ARGV[5]))) do
  local port = tonumber(p)
  local token, was = drop(port)
  reply[#reply + 1] = port
  reply[#reply + 1] = token
  reply[#reply + 1] = was
end

if ARGV[8] ~= "" and redis.call("ZCOUNT", resv, first, last - 1) >= tonumber(ARGV[8]) then
  return reply
end

-- The lowest free port of [first, last): in the interval holding `first`, else the first
-- interval starting inside the range.
local port
local member = redis.call("ZREVRANGEBYSCORE", free, first, "-inf", "LIMIT", 0, 1)[1]
if member then
  local _, e = parse(member)
  if e > first then port = first end
end
if not port then
  member = redis.call("ZRANGEBYSCORE", free, first, "(" .. last, "LIMIT", 0, 1)[1]
  if member then port = parse(member) end
end
if not port then
  local in_use = redis.call("ZCOUNT", used, first, last - 1)
  local q = redis.call("ZCOUNT", quar, first, last - 1)
  local reserved = redis.call("ZRANGEBYSCORE", resv, first, last - 1)
  local reserves = "none held in outage reserves"
  if #reserved > 0 then
    local seen, processes = {}, 0
    for _, p in ipairs(reserved) do
      local rec = redis.call("HGET", owner, p)
      local h = rec and string.match(rec, "^%d+:(.*)$") or ""
      if not seen[h] then seen[h], processes = true, processes + 1 end
    end
    reserves = #reserved .. " held in outage reserves by " .. processes ..
      (processes == 1 and " process" or " processes") .. ", see REDIS_PORT_RESERVE"
  end
  return redis.error_reply("CAPACITY port range " .. first .. "-" .. last ..
    " (end exclusive) on host " .. ARGV[6] .. " is exhausted: " .. in_use .. " of " ..
    (last - first) .. " ports in use (" .. reserves .. "; " .. q ..
    " quarantined as not bindable)")
end
take(port)

local token = redis.call("INCR", KEYS[8])
local expiry = now + tonumber(ARGV[4])
redis.call("ZADD", used, port, port)
redis.call("ZADD", exp, expiry, port)
redis.call("HSET", owner, port, token .. ":" .. holder)
redis.call("ZADD", byagent, 0, index_member(holder, port))
if ARGV[8] ~= "" then redis.call("ZADD", resv, port, port) end
redis.call("SET", KEYS[9], port .. ":" .. token .. ":" .. expiry, "PX", ARGV[7])
reply[1], reply[2], reply[3] = port, token, expiry
return reply
