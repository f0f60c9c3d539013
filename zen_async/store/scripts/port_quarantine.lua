-- port_quarantine: turn a fresh lease whose port turned out not to be bindable into a short
-- quarantine: the port stays out of the free intervals, held by nobody, until it expires
-- and is reclaimed like a lease.
--
-- KEYS[1..7]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- ARGV[1]  holder of the lease: "<tenant>/<agent>"
-- ARGV[2]  port
-- ARGV[3]  fencing token of the lease
-- ARGV[4]  quarantine in ms, counted from now
--
-- Returns 1, or 0 when the lease is no longer held (nothing changed).
-- idempotent: true
local exp, owner, byagent, quar, resv = KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local holder, port, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
if redis.call("HGET", owner, port) ~= token .. ":" .. holder then return 0 end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("HSET", owner, port, token .. ":")
redis.call("ZADD", quar, port, port)
redis.call("ZREM", resv, port)
redis.call("ZADD", exp, now + tonumber(ARGV[4]), port)
redis.call("ZREM", byagent, holder .. "|" .. string.format("%05d", port))
return 1
