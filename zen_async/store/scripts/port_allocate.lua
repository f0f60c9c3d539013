-- port_allocate: lease the lowest free port of [start, end) on one host to an agent,
-- reclaiming expired leases of that host first.
--
-- Every key belongs to one host and shares its hash tag ("ports:{<host>}:..."):
-- KEYS[1]  free     ZSET of free intervals, member "<start>:<end>" (end exclusive), score start;
--                   covers the whole port space 1..65535 of the host, so any range is a window
--                   onto it (rebuilt from KEYS[2] when missing)
-- KEYS[2]  used     ZSET port -> port: every port leased or quarantined
-- KEYS[3]  exp      ZSET port -> expiry (server ms)
-- KEYS[4]  owner    HASH port -> "<token>:<agent>" ("<token>:" while quarantined)
-- KEYS[5]  byagent  ZSET score 0, member "<agent>|<port, 5 digits>": the per-agent index
-- KEYS[6]  quar     ZSET port -> port: ports quarantined (not bindable)
-- KEYS[7]  seq      STRING: the host's fencing-token counter
-- KEYS[8]  op       STRING: this call's operation id; holds the reply once done, so a resend
--                   after a lost reply returns the same lease instead of a second one
-- ARGV[1]  agent id
-- ARGV[2]  range start (inclusive)
-- ARGV[3]  range end (exclusive)
-- ARGV[4]  lease TTL in ms
-- ARGV[5]  at most this many expired leases are reclaimed first
-- ARGV[6]  host name (for messages)
-- ARGV[7]  TTL in ms of the operation-id key
--
-- Returns {port, token, expiry ms, then port, token, agent of each lease reclaimed}.
-- Errors: "CAPACITY ..." naming the range and how many of its ports are in use.
-- Cost: O((1 + reclaimed) * log n), n = leases of the host.
-- idempotent: true (guarded by the operation id in KEYS[8])
local free, used, exp, owner, byagent, quar = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local done = redis.call("GET", KEYS[8])
if done then
  local p, t, e = string.match(done, "^(%d+):(%d+):(%d+)$")
  return {tonumber(p), tonumber(t), tonumber(e)}
end

local function now_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

--@include port_intervals

-- Forget whatever holds the port and free it; returns token, agent ("" if quarantined).
local function drop(port)
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
  return tonumber(token), agent
end

local agent, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
ensure_free()

local reply = {0, 0, 0}
for _, p in ipairs(redis.call("ZRANGEBYSCORE", exp, "-inf", now, "LIMIT", 0, tonumber(ARGV[5]))) do
  local port = tonumber(p)
  local token, holder = drop(port)
  reply[#reply + 1] = port
  reply[#reply + 1] = token
  reply[#reply + 1] = holder
end

-- The lowest free port of [first, last): in the interval holding `first`, else the first
-- interval starting inside the range.
local port, member, s, e
member = redis.call("ZREVRANGEBYSCORE", free, first, "-inf", "LIMIT", 0, 1)[1]
if member then
  s, e = parse(member)
  if e > first then port = first end
end
if not port then
  member = redis.call("ZRANGEBYSCORE", free, first, "(" .. last, "LIMIT", 0, 1)[1]
  if member then
    s, e = parse(member)
    port = s
  end
end
if not port then
  local size = last - first
  local in_use = redis.call("ZCOUNT", used, first, last - 1)
  local q = redis.call("ZCOUNT", quar, first, last - 1)
  return redis.error_reply("CAPACITY port range " .. first .. "-" .. last .. " (end exclusive) on host "
    .. ARGV[6] .. " is exhausted: " .. in_use .. " of " .. size .. " ports in use ("
    .. q .. " quarantined as not bindable)")
end
redis.call("ZREM", free, member)
if s < port then redis.call("ZADD", free, s, s .. ":" .. port) end
if port + 1 < e then redis.call("ZADD", free, port + 1, (port + 1) .. ":" .. e) end

local token = redis.call("INCR", KEYS[7])
local expiry = now + tonumber(ARGV[4])
redis.call("ZADD", used, port, port)
redis.call("ZADD", exp, expiry, port)
redis.call("HSET", owner, port, token .. ":" .. agent)
redis.call("ZADD", byagent, 0, agent .. "|" .. string.format("%05d", port))
redis.call("SET", KEYS[8], port .. ":" .. token .. ":" .. expiry, "PX", ARGV[7])
reply[1], reply[2], reply[3] = port, token, expiry
return reply
