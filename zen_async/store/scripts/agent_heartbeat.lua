-- agent_heartbeat: refresh an agent's liveness lease and record its gauges.
--
-- KEYS[1]  the agent hash (<P>agent:<id>)
-- ARGV[1]  P, the shard prefix
-- ARGV[2]  agent id
-- ARGV[3]  lease TTL in ms
-- ARGV[4]  memory in MB ("" to keep)
-- ARGV[5]  CPU percent ("" to keep)
-- ARGV[6]  open connections ("" to keep)
--
-- Returns the lease expiry (server ms), or -1 for a terminated agent (no lease).
-- Errors: "NOTFOUND <id>".
-- idempotent: true
local state = redis.call("HGET", KEYS[1], "state")
if not state then
  return redis.error_reply("NOTFOUND " .. ARGV[2])
end
local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call("HSET", KEYS[1], "seen", now)
if ARGV[4] ~= "" then redis.call("HSET", KEYS[1], "mem", ARGV[4]) end
if ARGV[5] ~= "" then redis.call("HSET", KEYS[1], "cpu", ARGV[5]) end
if ARGV[6] ~= "" then redis.call("HSET", KEYS[1], "conns", ARGV[6]) end
if state == "terminated" then
  return -1
end
local expiry = now + tonumber(ARGV[3])
redis.call("ZADD", ARGV[1] .. "leases", expiry, ARGV[2])
redis.call("ZREM", ARGV[1] .. "reaped", ARGV[2])
return expiry
